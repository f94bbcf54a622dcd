//! The operator's dashboard in a real browser (headless Chromium, from
//! Debian's `chromium`): while a rate-limited campaign runs, the numbers
//! the page shows are the API's.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, sandbox_replies, with};

/// The page as Chromium renders it after `budget_ms` of (virtual) time:
/// scripts run, the API is read, the tables are filled.
fn rendered(chromium: &std::path::Path, url: &str, budget_ms: u64) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--virtual-time-budget={budget_ms}"))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The texts of the number cells (class `n`, perhaps also `warn`) of the
/// row marked `attr="key"`.
fn numbers(dom: &str, attr: &str, key: &str) -> Vec<String> {
    let marker = format!("<tr {attr}=\"{key}\"");
    let start = dom
        .find(&marker)
        .unwrap_or_else(|| panic!("no row {marker} in {dom}"));
    let row = &dom[start..start + dom[start..].find("</tr>").unwrap()];
    row.split("<td class=\"n")
        .skip(1)
        .map(|c| {
            let c = &c[c.find('>').unwrap() + 1..];
            c[..c.find("</td>").unwrap()].to_string()
        })
        .collect()
}

/// Rows of the district roll-up of stock.
fn inventory_rows(client: &Client, server: &Server, token: &str) -> usize {
    let (status, body) = get_json(
        client,
        server,
        token,
        "/v1/inventory?kind=stock&level=district",
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    body["rows"].as_array().map_or(0, Vec::len)
}

fn campaign(client: &Client, server: &Server, token: &str, id: &str) -> Value {
    let (status, body) = get_json(client, server, token, &format!("/v1/campaigns/{id}"));
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[test]
fn the_dashboard_shows_what_the_api_says_while_a_campaign_runs() {
    let chromium = mhero_tests::program("chromium");
    if !mhero_tests::peer_present(
        chromium
            .is_none()
            .then(|| "chromium is not installed (run `scripts/setup.sh --peers`)".to_string()),
    ) {
        return;
    }
    let chromium = chromium.unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("mhero.toml");
    std::fs::write(
        &config,
        // Some sends fail for a while (retries) and some workers reply
        // (inbound), so every panel of the Grafana dashboard has data.
        "[channels.sms]\nconnector = \"sandbox\"\nrate = 300\nburst = 10\n\
         [channels.sms.sandbox]\nerror_percent = 2\nreply_percent = 5\nreplies = [\"YES\", \"1\"]\n",
    )
    .unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let client = Client::new();
    let admin = server.first_admin_token();
    let (viewer, _) = make_token(&client, &server, &admin, "viewer");

    // The page itself needs no token, and shows nothing without one.
    let page = client.get(server.url("/")).send().unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().unwrap().contains("<title>mHero broker</title>"));

    // 3,000 workers at 300/s: about ten seconds of sending.
    let recipients: Vec<Value> = (0..3000)
        .map(|i| json!({"phone": format!("+23177{i:07}")}))
        .collect();
    let (status, created) = json_of(
        with(client.post(server.url("/v1/campaigns")), &admin)
            .json_body(&json!({
                "name": "Stock report reminder",
                "lane": "bulk",
                "body": {"default": "Send this week's stock report."},
                "channels": ["sms"],
                "audience": {"recipients": recipients}
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    while campaign(&client, &server, &viewer, &id)["delivered"] == 0 {
        assert!(Instant::now() < deadline, "nothing delivered");
        std::thread::sleep(Duration::from_millis(50));
    }

    // A facility in a district, a nurse there, and her stock report:
    // the district's row of the stock table.
    let place = |id: &str, kind: &str, parent: Option<&str>| {
        let mut l = json!({"resourceType": "Location", "id": id, "name": format!("Place {id}"),
            "type": [{"coding": [{"code": kind}]}]});
        if let Some(p) = parent {
            l["partOf"] = json!({"reference": format!("Location/{p}")});
        }
        json!({ "resource": l })
    };
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &admin)
            .json_body(&json!({"resourceType": "Bundle", "type": "batch", "entry": [
                place("D1", "district", None),
                place("F1", "facility", Some("D1")),
                {"resource": {"resourceType": "Practitioner", "id": "N1", "active": true,
                    "telecom": [{"system": "phone", "value": "+231770000901"}]}},
                {"resource": {"resourceType": "PractitionerRole", "id": "N1-role", "active": true,
                    "practitioner": {"reference": "Practitioner/N1"},
                    "location": [{"reference": "Location/F1"}]}}
            ]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");
    sandbox_replies(
        &client,
        &server,
        "sms",
        &[("stock-1", "+231770000901", "STOCK ORS 0 AMOX 75")],
    );
    while inventory_rows(&client, &server, &viewer) < 2 {
        assert!(Instant::now() < deadline, "the stock report is not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    // A one-question survey she answers: its chart.
    let (status, survey) = json_of(
        with(client.post(server.url("/v1/surveys")), &admin)
            .json_body(&json!({"selector": "*", "channels": ["sms"], "questionnaire": {
                "resourceType": "Questionnaire", "status": "active", "title": "Cold chain",
                "item": [{"linkId": "fridge", "type": "boolean", "text": "Is your vaccine fridge working?"}]}}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{survey}");
    let survey_path = format!("/v1/surveys/{}", survey["id"].as_str().unwrap());
    sandbox_replies(
        &client,
        &server,
        "sms",
        &[("fridge-1", "+231770000901", "yes")],
    );
    loop {
        let (_, s) = get_json(&client, &server, &viewer, &survey_path);
        if s["questions"][0]["answered"] == 1 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the survey answer is not counted: {s}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let before = campaign(&client, &server, &viewer, &id);
    let dom = rendered(&chromium, &server.url(&format!("/#token={viewer}")), 2500);
    let after = campaign(&client, &server, &viewer, &id);
    assert_eq!(after["done"], false, "still running: {after}");

    // total, sent, delivered, failed, queued, ETA
    let shown = numbers(&dom, "data-campaign", &id);
    assert_eq!(shown.len(), 6, "{shown:?}");
    assert_eq!(shown[0], "3000");
    let delivered: u64 = shown[2].parse().unwrap();
    let d = |v: &Value| v["delivered"].as_u64().unwrap() + v["read"].as_u64().unwrap();
    assert!(
        d(&before) <= delivered && delivered <= d(&after),
        "shown {delivered}, the API said {} then {}",
        d(&before),
        d(&after)
    );
    assert_eq!(shown[3], "0", "nothing failed");
    assert!(
        shown[5] != "done" && shown[5] != "—",
        "an ETA while it runs: {shown:?}"
    );
    assert!(dom.contains("<polyline"), "the progress chart is drawn");

    // The channel: its configured rate, and the bulk lane's backlog.
    let channel = numbers(&dom, "data-channel", "sms");
    assert_eq!(channel[0], "300", "{channel:?}");
    // rate, sent in the last second, then each lane: emergency … bulk.
    let bulk: u64 = channel[5].parse().unwrap();
    assert!(bulk > 0 && bulk <= 3000, "{channel:?}");
    // The survey's answers, charted: a bar for "yes".
    let answers = &dom[dom
        .find("<svg class=\"answers\"")
        .expect("the survey chart")..];
    assert!(answers[..answers.find("</svg>").unwrap()].contains("<title>yes: 1</title>"));
    // Facilities reporting, stock, stocked out, low.
    let ors = numbers(&dom, "data-inventory", "Location/D1 ORS");
    assert_eq!(ors[..4], ["1", "0", "1", "0"], "{ors:?}");
    let amox = numbers(&dom, "data-inventory", "Location/D1 AMOX");
    assert_eq!(amox[..4], ["1", "75", "0", "0"], "{amox:?}");
    assert!(
        dom.find("Location/D1 ORS") < dom.find("Location/D1 AMOX"),
        "stock-outs first"
    );
    assert!(
        dom.contains("updated "),
        "the page says when it last read the API"
    );
    // The Grafana dashboard that ships in config/grafana asks only for
    // metrics this broker exports.
    let metrics = with(client.get(server.url("/metrics")), &viewer)
        .send()
        .unwrap()
        .text()
        .unwrap();
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let grafana: Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../config/grafana/mhero-broker.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let panels = grafana["panels"].as_array().unwrap();
    assert!(panels.len() >= 10);
    let mut asked = std::collections::BTreeSet::new();
    for panel in panels {
        let expr = panel["targets"][0]["expr"].as_str().unwrap();
        let names: Vec<&str> = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("mhero_"))
            .collect();
        assert!(!names.is_empty(), "{}: {expr}", panel["title"]);
        asked.extend(names);
    }
    let missing: Vec<&&str> = asked.iter().filter(|n| !exported.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "the Grafana dashboard asks for {missing:?}, which /metrics does not have:\n{metrics}"
    );
    assert!(server.stop().success());
}
