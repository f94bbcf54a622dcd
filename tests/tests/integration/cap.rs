//! CAP 1.2 alerts through `POST /v1/alerts/cap`: an alert reaches the
//! workers of the districts its geocodes name, in their language, on the
//! emergency lane; an Update replaces it, a Cancel stops it; invalid CAP
//! is refused with the reason.

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, with};

fn cap(status: &str, msg_type: &str, identifier: &str, references: &str, infos: &str) -> String {
    format!(
        r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>{identifier}</identifier>
  <sender>alerts@moh.gov.lr</sender>
  <sent>2026-11-28T09:00:00+00:00</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {references}
  {infos}
</alert>"#
    )
}

fn info(language: &str, headline: &str, urgency: &str, district: &str) -> String {
    format!(
        r#"<info>
    <language>{language}</language>
    <category>Health</category>
    <event>Cholera outbreak</event>
    <urgency>{urgency}</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <expires>2099-01-01T00:00:00+00:00</expires>
    <headline>{headline}</headline>
    <instruction>Report suspected cases today.</instruction>
    <area><areaDesc>{district}</areaDesc><geocode><valueName>MOH-LOC</valueName><value>{district}</value></geocode></area>
  </info>"#
    )
}

fn post(client: &Client, server: &Server, token: &str, xml: String) -> (StatusCode, Value) {
    json_of(
        with(client.post(server.url("/v1/alerts/cap")), token)
            .header("content-type", "application/cap+xml")
            .body(xml)
            .send()
            .unwrap(),
    )
}

fn campaign(client: &Client, server: &Server, token: &str, id: &str) -> Value {
    get_json(client, server, token, &format!("/v1/campaigns/{id}")).1
}

#[test]
fn cap_alerts_reach_the_districts_they_name_and_updates_and_cancels_follow() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("mhero.toml");
    // One message a second: an alert is still sending when its Update
    // and Cancel arrive.
    std::fs::write(
        &config,
        "[channels.sms]\nconnector = \"sandbox\"\nrate = 1\nburst = 1\n",
    )
    .unwrap();
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");

    // Two districts, a facility in each, three workers.
    let location = |id: &str, part_of: Option<&str>| {
        let mut l = json!({"resourceType": "Location", "id": id, "name": id});
        if let Some(p) = part_of {
            l["partOf"] = json!({"reference": format!("Location/{p}")});
        }
        json!({"resource": l})
    };
    let worker = |n: u32, phone: &str, lang: &str, facility: &str| {
        [
            json!({"resource": {"resourceType": "Practitioner", "id": format!("P-{n}"), "active": true,
                "telecom": [{"system": "phone", "value": phone}], "communication": [{"coding": [{"code": lang}]}]}}),
            json!({"resource": {"resourceType": "PractitionerRole", "id": format!("R-{n}"), "active": true,
                "practitioner": {"reference": format!("Practitioner/P-{n}")},
                "code": [{"coding": [{"code": "registered-nurse"}]}],
                "location": [{"reference": format!("Location/{facility}")}]}}),
        ]
    };
    let mut entry = vec![
        location("D-BONG", None),
        location("F-PHEBE", Some("D-BONG")),
        location("D-LOFA", None),
        location("F-VOINJAMA", Some("D-LOFA")),
    ];
    entry.extend(worker(1, "+231770000301", "en", "F-PHEBE"));
    entry.extend(worker(2, "+231770000302", "fr", "F-PHEBE"));
    entry.extend(worker(3, "+231770000303", "en", "F-VOINJAMA"));
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(&json!({"resourceType": "Bundle", "type": "batch", "entry": entry}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");

    // The alert: Bong only (two workers), English and French, emergency.
    let alert = cap(
        "Actual",
        "Alert",
        "MOH-0041",
        "",
        &format!(
            "{}{}",
            info("en-US", "Cholera confirmed in Bong", "Immediate", "D-BONG"),
            info("fr", "Choléra confirmé à Bong", "Immediate", "D-BONG")
        ),
    );
    let (status, sent) = post(&client, &server, &sender, alert.clone());
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["lane"], "emergency");
    let first = sent["campaign"].as_str().unwrap().to_string();
    let c = campaign(&client, &server, &sender, &first);
    assert_eq!(c["total"], 2, "Bong's two workers, not Lofa's: {c}");
    assert_eq!(c["lane"], "emergency");
    assert_eq!(sent["repost"], false);

    // The same alert posted again (a feed's repost, a publisher's retry):
    // answered with the campaign it became, not sent twice.
    let (status, again) = post(&client, &server, &sender, alert.clone());
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (again["repost"].as_bool(), again["campaign"].as_str()),
        (Some(true), Some(first.as_str())),
        "{again}"
    );
    assert!(
        again["not_sent"].as_str().unwrap().contains("MOH-0041"),
        "{again}"
    );
    // Killed and started again: the alert's key was committed with its
    // campaign, so the publisher's retry is still a repost.
    drop(server);
    let server = Server::start_with(
        &tmp.path().join("data"),
        &["--config", config.to_str().unwrap()],
    );
    let (status, again) = post(&client, &server, &sender, alert.clone());
    assert_eq!(
        (
            status,
            again["repost"].as_bool(),
            again["campaign"].as_str()
        ),
        (StatusCode::OK, Some(true), Some(first.as_str())),
        "{again}"
    );

    // An Update replaces it: what is still queued of the first stops.
    let update = cap(
        "Actual",
        "Update",
        "MOH-0042",
        "<references>alerts@moh.gov.lr,MOH-0041,2026-11-28T09:00:00+00:00</references>",
        &info("en-US", "Cholera in Bong and Lofa", "Expected", "D-LOFA"),
    );
    let (status, updated) = post(&client, &server, &sender, update);
    assert_eq!(status, StatusCode::CREATED, "{updated}");
    assert_eq!(updated["cancelled"], json!([first]));
    assert_eq!(updated["lane"], "high", "Expected, Severe");
    let second = updated["campaign"].as_str().unwrap().to_string();
    assert_eq!(
        campaign(&client, &server, &sender, &first)["state"],
        "cancelled"
    );
    assert_eq!(campaign(&client, &server, &sender, &second)["total"], 1);

    // A Cancel stops the update and sends nothing.
    let cancel = cap(
        "Actual",
        "Cancel",
        "MOH-0043",
        "<references>alerts@moh.gov.lr,MOH-0042,2026-11-28T09:05:00+00:00</references>",
        "",
    );
    let (status, cancelled) = post(&client, &server, &sender, cancel);
    assert_eq!(status, StatusCode::OK, "{cancelled}");
    assert_eq!(cancelled["cancelled"], json!([second]));
    assert_eq!(cancelled["campaign"], Value::Null);
    assert_eq!(
        campaign(&client, &server, &sender, &second)["state"],
        "cancelled"
    );
    let unknown = cap(
        "Actual",
        "Cancel",
        "MOH-0044",
        "<references>alerts@moh.gov.lr,MOH-9999,2026-11-28T09:05:00+00:00</references>",
        "",
    );
    let (status, body) = post(&client, &server, &sender, unknown);
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );

    // An exercise is checked and answered, never sent.
    let exercise = cap(
        "Exercise",
        "Alert",
        "MOH-X1",
        "",
        &info("en-US", "Drill", "Immediate", "D-BONG"),
    );
    let (status, body) = post(&client, &server, &sender, exercise);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["campaign"], Value::Null);
    assert!(body["not_sent"].as_str().unwrap().contains("Exercise"));

    // Invalid CAP: 400 with the reason.
    let (status, body) = post(
        &client,
        &server,
        &sender,
        cap(
            "Actual",
            "Alert",
            "MOH-B1",
            "",
            &info("en-US", "x", "Soon", "D-BONG"),
        ),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_cap");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("urgency"),
        "{body}"
    );
    let (status, body) = post(&client, &server, &sender, "<alert><oops".into());
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_cap"))
    );
    let (_, list) = get_json(&client, &server, &sender, "/v1/campaigns");
    assert_eq!(
        list.as_array().unwrap().len(),
        2,
        "only the alert and its update: {list}"
    );
    assert!(server.stop().success());
}
