//! Reports through the real server: stock and case reports arriving on a
//! channel webhook, the inventory roll-up over HTTP, the district's
//! pharmacist alerted, and every report item as a FHIR Observation.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, sandbox_replies, with};

fn location(id: &str, name: &str, parent: Option<&str>, kind: &str) -> Value {
    let mut l = json!({"resourceType": "Location", "id": id, "name": name, "status": "active",
        "type": [{"coding": [{"system": "http://ihris.org/fhir/CodeSystem/location-type", "code": kind}]}]});
    if let Some(p) = parent {
        l["partOf"] = json!({"reference": format!("Location/{p}")});
    }
    l
}

fn worker(id: &str, phone: &str, cadre: &str, facility: &str) -> [Value; 2] {
    [
        json!({"resourceType": "Practitioner", "id": id, "active": true,
               "name": [{"text": format!("Worker {id}")}],
               "telecom": [{"system": "phone", "value": phone}]}),
        json!({"resourceType": "PractitionerRole", "id": format!("{id}-role"), "active": true,
               "practitioner": {"reference": format!("Practitioner/{id}")},
               "location": [{"reference": format!("Location/{facility}")}],
               "code": [{"coding": [{"system": "http://ihris.org/fhir/CodeSystem/cadre", "code": cadre}]}]}),
    ]
}

fn get(client: &Client, server: &Server, token: &str, path: &str) -> Value {
    let (status, v) = get_json(client, server, token, path);
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

#[test]
fn stock_reports_roll_up_alert_the_district_and_export_as_observations() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, config) = (tmp.path().join("data"), tmp.path().join("mhero.toml"));
    std::fs::write(
        &config,
        "[channels.sms]\nconnector = \"sandbox\"\n\n[reports]\nlow_stock = { AMOX = 50 }\n",
    )
    .unwrap();
    let server = Server::start_with(&data, &["--config", config.to_str().unwrap()]);
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let mut entry: Vec<Value> = vec![
        location("LR", "Liberia", None, "country"),
        location("D1", "Bong district 1", Some("LR"), "district"),
        location("D2", "Bong district 2", Some("LR"), "district"),
        location("F1", "Facility 1", Some("D1"), "facility"),
        location("F2", "Facility 2", Some("D2"), "facility"),
    ];
    entry.extend(worker("N1", "+231770000601", "nurse", "F1"));
    entry.extend(worker("N2", "+231770000602", "nurse", "F2"));
    entry.extend(worker("PH1", "+231770000611", "pharmacist", "F1"));
    let entry: Vec<Value> = entry.into_iter().map(|r| json!({"resource": r})).collect();
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(&json!({"resourceType": "Bundle", "type": "batch", "entry": entry}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");

    sandbox_replies(
        &client,
        &server,
        "sms",
        &[
            ("s1", "+231770000601", "STOCK AMOX 20 ORS 0"),
            ("s2", "+231770000602", "STOCK AMOX 300 ORS 80"),
            ("c1", "+231770000602", "CASE CHOLERA 2"),
        ],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let districts = loop {
        let v = get(
            &client,
            &server,
            &sender,
            "/v1/inventory?kind=stock&level=district",
        );
        if v["rows"].as_array().is_some_and(|r| r.len() == 4) {
            break v;
        }
        assert!(Instant::now() < deadline, "not rolled up: {v}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let row = |place: &str, item: &str| {
        districts["rows"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["place"] == place && r["item"] == item)
            .cloned()
            .unwrap_or_else(|| panic!("no {place} {item}: {districts}"))
    };
    assert_eq!(districts["tally"], "latest");
    assert_eq!(
        districts["rows"][0]["stocked_out"], 1,
        "stock-outs first: {districts}"
    );
    let ors = row("Location/D1", "ORS");
    assert_eq!(
        (ors["stocked_out"].as_u64(), ors["quantity"].as_u64()),
        (Some(1), Some(0))
    );
    assert_eq!(ors["name"], "Bong district 1");
    assert_eq!(row("Location/D1", "AMOX")["low"], 1);
    assert_eq!(row("Location/D2", "AMOX")["quantity"], 300);
    let country = get(
        &client,
        &server,
        &sender,
        "/v1/inventory?location=Location/LR&level=country&item=amox",
    );
    assert_eq!(country["rows"].as_array().unwrap().len(), 1, "{country}");
    assert_eq!(country["rows"][0]["quantity"], 320);
    assert_eq!(country["rows"][0]["facilities"], 2);
    let cases = get(
        &client,
        &server,
        &sender,
        "/v1/inventory?kind=case&level=facility",
    );
    assert_eq!(cases["tally"], "sum");
    assert_eq!(cases["rows"][0]["quantity"], 2, "{cases}");
    let (status, bad) = get_json(&client, &server, &sender, "/v1/inventory?kind=weather");
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(bad.to_string().contains("case, stock"), "{bad}");

    // District 1's pharmacist is alerted (ORS out, AMOX low at facility
    // 1); nobody in district 2 matches the alert selector, so the cholera
    // report says so. A page's results are recorded after all its alerts
    // were submitted, and an alert whose selector finds nobody is refused
    // (its `preparing` record removed) before that: once the case report
    // is recorded, the campaign list holds exactly the alerts that went.
    let inbound = loop {
        let v = get(&client, &server, &sender, "/v1/inbound?route=case");
        if v.as_array().is_some_and(|a| !a.is_empty()) {
            break v;
        }
        assert!(Instant::now() < deadline, "the case report is not recorded");
        std::thread::sleep(Duration::from_millis(100));
    };
    let listed = get(&client, &server, &sender, "/v1/campaigns");
    let campaigns: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["name"].as_str().unwrap_or_default().contains(" alert r"))
        .collect();
    assert_eq!(campaigns.len(), 1, "{listed}");
    assert_eq!(campaigns[0]["total"], 1);
    assert_eq!(campaigns[0]["lane"], "high");
    assert!(
        campaigns[0]["name"]
            .as_str()
            .is_some_and(|n| n.starts_with("stock alert")),
        "{listed}"
    );
    let problems = inbound[0]["processed"]["problems"].to_string();
    assert!(problems.contains("alert not sent"), "{inbound}");

    // The HMIS export: one Observation per report item.
    let bundle = get(&client, &server, &sender, "/fhir/r4/Observation?_count=2");
    assert_eq!(bundle["resourceType"], "Bundle");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 2);
    let first = &entries[0]["resource"];
    assert_eq!(first["code"]["coding"][0]["code"], "AMOX");
    assert_eq!(first["subject"]["reference"], "Location/F1");
    assert_eq!(first["performer"][0]["reference"], "Practitioner/N1");
    assert_eq!(first["valueQuantity"]["value"], 20);
    let next = bundle["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .expect("a next page")["url"]
        .as_str()
        .unwrap()
        .to_string();
    let path = &next[next.find("/fhir/").unwrap()..];
    let rest = get(&client, &server, &sender, path);
    let codes: Vec<&str> = rest["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["code"]["coding"][0]["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["AMOX", "ORS"], "{rest}");
    let cholera = get(
        &client,
        &server,
        &sender,
        "/fhir/r4/Observation?category=case",
    );
    assert_eq!(
        cholera["entry"][0]["resource"]["valueInteger"], 2,
        "{cholera}"
    );
    assert!(server.stop().success());
}
