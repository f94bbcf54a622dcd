//! The `kannel` connector against a real Kannel on loopback (Debian's
//! packages: bearerbox, smsbox, and `fakesmsc` as the operator's SMSC):
//! 10,000 messages out at a configured rate, every delivery report back
//! through the broker's webhook, inbound SMS injected by the SMSC arriving
//! as inbound messages.

use std::time::{Duration, Instant};

use mhero_tests::kannel::{self, Kannel, Mo};
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, with};

const MESSAGES: usize = 10_000;
/// Messages per second the channel is configured for, and its burst.
const RATE: u32 = 500;
const BURST: u32 = 10;
const CALLBACK_TOKEN: &str = "kannel-callbacks-7f3a9c";

fn phone(i: usize) -> String {
    format!("+23177{:07}", 1_000_000 + i)
}

#[test]
fn ten_thousand_sms_through_kannel_at_the_configured_rate_with_receipts_and_replies() {
    if !mhero_tests::peer_present(kannel::missing()) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", mhero_tests::free_port());
    let sendsms_port = mhero_tests::free_port();
    let webhook_url = format!("http://{listen}/webhooks/sms");
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[channels.sms]
connector = "kannel"
rate = {RATE}
burst = {BURST}

[plugins.config.kannel]
base_url = "http://127.0.0.1:{sendsms_port}"
username = "mhero"
password = "kannel-pass"
from = "4455"
webhook_url = "{webhook_url}"
webhook_token = "{CALLBACK_TOKEN}"
"#
        ),
    )
    .unwrap();
    let server = Server::start_on(
        &dir.path().join("data"),
        &["--config", config.to_str().unwrap()],
        &listen,
    );
    let kannel = Kannel::start(
        &dir.path().join("kannel"),
        &kannel::Options {
            webhook_url: webhook_url.clone(),
            webhook_token: CALLBACK_TOKEN.into(),
            username: "mhero".into(),
            password: "kannel-pass".into(),
            mo: Some(Mo {
                from: "+231770999001".into(),
                to: "4455".into(),
                text: "STOCK AMOX 120 ORS 40".into(),
                count: 3,
            }),
            sendsms_port,
        },
    )
    .unwrap();
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");

    // A forged callback (no token) is refused and changes nothing.
    let forged = client
        .get(format!(
            "{webhook_url}?type=mo&from=%2B231770999002&text=STOP"
        ))
        .send()
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);

    let recipients: Vec<Value> = (0..MESSAGES).map(|i| json!({"phone": phone(i)})).collect();
    let text = "Stock report due Friday: reply STOCK <item> <quantity>.";
    let (status, created) = json_of(
        with(client.post(server.url("/v1/campaigns")), &sender)
            .json_body(&json!({
                "name": "Stock reminder",
                "lane": "normal",
                "body": {"default": text},
                "channels": ["sms"],
                "audience": {"recipients": recipients},
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["accepted"], MESSAGES);
    let id = created["id"].as_str().unwrap().to_string();

    // Every delivery report back: 10,000 delivered. At 500/s the sending
    // takes 20 s; the deadline leaves room for a slow machine.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(240);
    let progress = loop {
        let (status, body) = get_json(&client, &server, &sender, &format!("/v1/campaigns/{id}"));
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["delivered"] == MESSAGES {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {body}{}",
            kannel.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(progress["done"], true, "{progress}");
    for key in [
        "failed",
        "dead",
        "queued",
        "expired",
        "cancelled",
        "quarantined",
    ] {
        assert_eq!(progress[key], 0, "{key}: {progress}");
    }

    // The phones' side: each recipient got the text exactly once.
    let received = kannel.received();
    assert_eq!(received.len(), MESSAGES, "{}", kannel.logs());
    let mut to: Vec<&str> = received.iter().map(|(to, _)| to.as_str()).collect();
    to.sort_unstable();
    to.dedup();
    assert_eq!(to.len(), MESSAGES);
    assert!(received.iter().all(|(_, t)| t == text), "{:?}", received[0]);

    // The configured rate, as Kannel saw the requests arrive (smsbox's
    // log, to the second): never more than the rate and its burst in a
    // second, give or take what a scheduling stall at a second's edge moves
    // into the next (5 % of the rate: the machine runs the broker, Kannel
    // and this test on two cores); and over the whole run no faster than
    // the rate, which is exact: 10,000 at 500/s span at least 20 seconds.
    let requests = kannel.requests_per_second();
    assert_eq!(requests.values().sum::<u32>() as usize, MESSAGES);
    let busiest = requests.values().max().copied().unwrap_or(0);
    assert!(
        busiest <= RATE + BURST + RATE / 20,
        "{busiest} requests in one second at {RATE}/s (burst {BURST}): {requests:?}"
    );
    assert!(
        requests.len() >= (MESSAGES - BURST as usize) / RATE as usize,
        "10,000 requests in {} seconds at {RATE}/s: {requests:?}",
        requests.len()
    );
    // Whether the rate is *reached* is a figure, not a test property (on a
    // busy CI machine it is not): `loadgen kannel` measures it.
    let sent = kannel.sent_per_second();
    assert_eq!(sent.values().sum::<u32>() as usize, MESSAGES);

    // Each delivery's own record says delivered, on sms.
    let mut from = 0;
    let mut seen = 0;
    loop {
        let (status, page) = get_json(
            &client,
            &server,
            &sender,
            &format!("/v1/campaigns/{id}/deliveries?from={from}&limit=1000"),
        );
        assert_eq!(status, StatusCode::OK, "{page}");
        for d in page["deliveries"].as_array().unwrap() {
            assert_eq!(d["status"], "delivered", "{d}");
            assert_eq!(d["channel"], "sms", "{d}");
            seen += 1;
        }
        match page["next"].as_u64() {
            Some(next) => from = next,
            None => break,
        }
    }
    assert_eq!(seen, MESSAGES);

    // The SMSC's three inbound SMS arrived as inbound messages, each once.
    let deadline = Instant::now() + Duration::from_secs(30);
    let inbound = loop {
        let (status, body) = get_json(&client, &server, &sender, "/v1/inbound?limit=100");
        assert_eq!(status, StatusCode::OK, "{body}");
        let items = body.as_array().cloned().unwrap_or_default();
        let processed = items.iter().filter(|m| !m["processed"].is_null()).count();
        if processed >= 3 || Instant::now() > deadline {
            break items;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(inbound.len(), 3, "{inbound:?}{}", kannel.logs());
    for m in &inbound {
        assert_eq!(m["from"], "+231770999001", "{m}");
        assert_eq!(m["text"], "STOCK AMOX 120 ORS 40", "{m}");
        assert_eq!(m["channel"], "sms", "{m}");
    }
    // The first is a stock report; the same text from the same worker
    // again within the window is kept, marked as its duplicate.
    let routes: Vec<&str> = inbound
        .iter()
        .map(|m| m["processed"]["route"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(routes, ["stock", "duplicate", "duplicate"], "{inbound:?}");
    assert_eq!(inbound[1]["processed"]["duplicate_of"], inbound[0]["seq"]);
    // `mhero channel test`: one message through the same connector and
    // gateway, outside any campaign, with what Kannel answered.
    let out = super::mhero()
        .args(["--config", config.to_str().unwrap()])
        .args(["channel", "test", "sms", "--to", "0770999002", "--json"])
        .args(["--text", "Testing the Kannel channel"])
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(out.status.success(), "{report}");
    assert_eq!(report["outcome"], "accepted", "{report}");
    assert_eq!(report["status"], 202, "{report}");
    assert_eq!(report["body"], "0: Accepted for delivery", "{report}");
    // The password stays out of what is shown.
    assert!(!report.to_string().contains("kannel-pass"), "{report}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while kannel.received().len() < MESSAGES + 1 {
        assert!(Instant::now() < deadline, "{}", kannel.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let received = kannel.received();
    assert_eq!(
        received.last().unwrap(),
        &(
            "+231770999002".to_string(),
            "Testing the Kannel channel".to_string()
        )
    );

    drop(kannel);
    assert!(server.stop().success());
}

/// Without a peer: the command on the simulator, and its clear refusals.
#[test]
fn channel_test_reports_what_the_gateway_answered() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        "[channels.sms]\nconnector = \"sandbox\"\n[channels.sms.sandbox]\nunknown_percent = 100\n[channels.wa]\nconnector = \"sandbox\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        super::mhero()
            .args(["--config", config.to_str().unwrap(), "channel"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["test", "wa", "--to", "+231770000001"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("POST sandbox://gateway/messages"), "{text}");
    assert!(text.contains("answer:   HTTP 202"), "{text}");
    assert!(
        text.contains("outcome:  accepted: the gateway took it as"),
        "{text}"
    );
    // The simulator says the number is unknown: unreachable, exit 1.
    let out = run(&["test", "sms", "--to", "+231770000001"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("outcome:  unreachable:"), "{text}");
    let out = run(&["test", "telegram", "--to", "+231770000001"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("no channel \"telegram\" in the config (configured: sms, wa)"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["test", "wa", "--to", "12"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--to: \"12\" is not a valid phone number"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("sms") && text.contains("sandbox://gateway"),
        "{text}"
    );
}

/// `channel add` writes a channel into the config file only once the
/// result checks out.
#[test]
fn channel_add_writes_a_checked_config() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mhero.toml");
    let run = |args: &[&str]| {
        super::mhero()
            .args(["--config", config.to_str().unwrap(), "channel"])
            .args(args)
            .output()
            .unwrap()
    };
    let stderr = |out: &std::process::Output| String::from_utf8_lossy(&out.stderr).to_string();
    // A new file, with the connector's settings.
    let out = run(&[
        "add",
        "sms",
        "--connector",
        "kannel",
        "--rate",
        "100",
        "--set",
        "base_url=http://127.0.0.1:13013",
        "--set",
        "username=mhero",
        "--set",
        "password=kannel pass",
        "--set",
        "dlr_mask=3",
        "--set",
        "webhook_token=cb-secret",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let written = std::fs::read_to_string(&config).unwrap();
    let table: toml::Table = toml::from_str(&written).unwrap();
    assert_eq!(
        table["channels"]["sms"]["connector"].as_str(),
        Some("kannel")
    );
    assert_eq!(table["channels"]["sms"]["rate"].as_float(), Some(100.0));
    assert_eq!(
        table["plugins"]["config"]["kannel"]["dlr_mask"].as_integer(),
        Some(3)
    );
    assert_eq!(
        table["plugins"]["config"]["kannel"]["password"].as_str(),
        Some("kannel pass")
    );
    // A second channel on another connector, appended.
    let out = run(&["add", "wa", "--connector", "sandbox"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listed = String::from_utf8_lossy(&run(&["list"]).stdout).to_string();
    assert!(
        listed.contains("sms") && listed.contains("kannel") && listed.contains("100/s"),
        "{listed}"
    );
    assert!(
        listed.contains("wa") && listed.contains("sandbox"),
        "{listed}"
    );
    // A second channel on kannel (another SMSC route): its settings are
    // its own, over the connector's.
    let out = run(&[
        "add",
        "sms2",
        "--connector",
        "kannel",
        "--set",
        "from=4455",
        "--set",
        "base_url=http://127.0.0.1:13113",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let table: toml::Table = toml::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        table["channels"]["sms2"]["settings"]["from"].as_str(),
        Some("4455")
    );
    assert!(
        table["plugins"]["config"]["kannel"].get("from").is_none(),
        "{table}"
    );
    let listed = String::from_utf8_lossy(&run(&["list"]).stdout).to_string();
    let line = |name: &str| {
        listed
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("sms").contains("127.0.0.1:13013"), "{listed}");
    assert!(line("sms2").contains("127.0.0.1:13113"), "{listed}");
    let before = std::fs::read_to_string(&config).unwrap();
    // Refused, and the file left as it was: a name taken, an unknown
    // connector, a setting the connector does not know (for a new
    // connector, or a channel's own), a bad name.
    for (args, says) in [
        (
            vec!["add", "sms", "--connector", "sandbox"],
            "already has a channel \"sms\"",
        ),
        (
            vec!["add", "x", "--connector", "carrier-pigeon"],
            "carrier-pigeon",
        ),
        (
            vec!["add", "t", "--connector", "telegram", "--set", "bot_tokn=1"],
            "unknown setting \"bot_tokn\"",
        ),
        (
            vec!["add", "k2", "--connector", "kannel", "--set", "frm=4455"],
            "channels.k2.settings: unknown setting \"frm\"",
        ),
        (
            vec![
                "add",
                "k3",
                "--connector",
                "kannel",
                "--set",
                "dlr_mask=often",
            ],
            "\"often\" is not an integer",
        ),
        (
            vec!["add", "SMS 2", "--connector", "kannel"],
            "lowercase letters",
        ),
    ] {
        let out = run(&args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(&config).unwrap(),
            before,
            "{args:?}"
        );
    }
    // Without --config there is no file to write.
    let out = super::mhero()
        .args(["channel", "add", "sms", "--connector", "sandbox"])
        .env_remove("MHERO_CONFIG")
        .output()
        .unwrap();
    assert!(
        stderr(&out).contains("name it with --config"),
        "{}",
        stderr(&out)
    );
    // A channel whose own settings were edited wrong by hand: the list
    // says why it is not usable (the broker refuses to start with it).
    std::fs::write(
        &config,
        format!("{before}\n[channels.bad]\nconnector = \"kannel\"\n[channels.bad.settings]\nfrm = \"x\"\n"),
    )
    .unwrap();
    let listed = String::from_utf8_lossy(&run(&["list"]).stdout).to_string();
    let bad = listed
        .lines()
        .find(|l| l.starts_with("bad "))
        .unwrap_or_default();
    assert!(
        bad.contains("not usable") && bad.contains("unknown setting \"frm\""),
        "{listed}"
    );
}
