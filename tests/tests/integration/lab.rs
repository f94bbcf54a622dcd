//! Lab results through the real server: a FHIR DiagnosticReport to the
//! clinician who ordered it; only a notice on an insecure channel; the
//! clinician's reply kept as the acknowledgement.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, sandbox_replies, with};

fn report(id: &str, requester: Value) -> Value {
    let mut contained = vec![
        json!({"resourceType": "ServiceRequest", "id": "order", "status": "active", "intent": "order",
               "code": {"text": "Malaria RDT"}, "subject": {"display": "Patient 0042"}, "requester": requester}),
        json!({"resourceType": "Observation", "id": "rdt", "status": "final",
               "code": {"text": "P. falciparum antigen"}, "valueCodeableConcept": {"text": "POSITIVE"},
               "interpretation": [{"coding": [{"code": "POS", "display": "positive"}]}]}),
        json!({"resourceType": "Observation", "id": "hb", "status": "final",
               "code": {"text": "Haemoglobin"}, "valueQuantity": {"value": 9.1, "unit": "g/dL"},
               "interpretation": [{"coding": [{"code": "L"}]}]}),
    ];
    if requester["reference"] == "#clinician" {
        contained.push(json!({"resourceType": "Practitioner", "id": "clinician",
                              "telecom": [{"system": "phone", "value": "+231770000502"}]}));
    }
    json!({
        "resourceType": "DiagnosticReport",
        "identifier": [{"system": "https://lab.example/reports", "value": id}],
        "status": "final",
        "code": {"text": "Malaria RDT"},
        "subject": {"display": "Patient 0042"},
        "basedOn": [{"reference": "#order"}],
        "result": [{"reference": "#rdt"}, {"reference": "#hb"}],
        "conclusion": "Start ACT today.",
        "contained": contained,
    })
}

fn post(client: &Client, server: &Server, token: &str, body: &Value) -> (StatusCode, Value) {
    json_of(
        with(client.post(server.url("/fhir/r4/DiagnosticReport")), token)
            .json_body(body)
            .send()
            .unwrap(),
    )
}

fn get(client: &Client, server: &Server, token: &str, path: &str) -> Value {
    let (status, v) = get_json(client, server, token, path);
    assert_eq!(status, StatusCode::OK, "{path}: {v}");
    v
}

fn start(data: &std::path::Path, config: &std::path::Path, preference: &str) -> Server {
    std::fs::write(
        config,
        format!(
            "[api]\ndefault_channels = [{preference}]\n\n[channels.whatsapp]\nconnector = \"sandbox\"\n\n[channels.sms]\nconnector = \"sandbox\"\ninsecure = true\n"
        ),
    )
    .unwrap();
    Server::start_with(data, &["--config", config.to_str().unwrap()])
}

#[test]
fn a_lab_result_reaches_its_clinician_safely_and_the_reply_acknowledges_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, config) = (tmp.path().join("data"), tmp.path().join("mhero.toml"));
    let server = start(&data, &config, "\"whatsapp\", \"sms\"");
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(
                &json!({"resourceType": "Bundle", "type": "batch", "entry": [
                {"resource": {"resourceType": "Practitioner", "id": "DR-7", "active": true,
                              "telecom": [{"system": "phone", "value": "+231770000501"}]}}]}),
            )
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");

    // No requester: refused with the element named.
    let mut orphan = report("LAB-1", json!({"reference": "Practitioner/DR-7"}));
    orphan["basedOn"] = json!([]);
    let (status, refused) = post(&client, &server, &sender, &orphan);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("basedOn"), "{refused}");

    // WhatsApp first, and secure: the result itself, on secure channels only.
    let (status, sent) = post(
        &client,
        &server,
        &sender,
        &report("LAB-1", json!({"reference": "Practitioner/DR-7"})),
    );
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["extension"][0]["valueBoolean"], true);
    let id = sent["id"].as_str().unwrap().to_string();
    let request = get(
        &client,
        &server,
        &sender,
        &format!("/fhir/r4/CommunicationRequest/{id}"),
    );
    let text = request["payload"][0]["contentString"].as_str().unwrap();
    assert!(
        text.contains("P. falciparum antigen: POSITIVE (positive)"),
        "{text}"
    );
    assert!(
        text.contains("Haemoglobin: 9.1 g/dL (L)") && text.contains("Ref LAB-1"),
        "{text}"
    );
    let media: Vec<&str> = request["medium"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|c| c["coding"][0]["code"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert!(
        !media.contains(&"sms"),
        "never falls back to the insecure channel: {request}"
    );
    // The same report again: the same request, nothing sent twice.
    let (status, again) = post(
        &client,
        &server,
        &sender,
        &report("LAB-1", json!({"reference": "Practitioner/DR-7"})),
    );
    assert_eq!(
        (status, again["id"].as_str()),
        (StatusCode::OK, Some(id.as_str()))
    );

    // Delivered, then the clinician replies: the acknowledgement.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let b = get(
            &client,
            &server,
            &sender,
            &format!("/fhir/r4/Communication?based-on=CommunicationRequest/{id}"),
        );
        if b["entry"][0]["resource"]["status"] == "completed" {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {b}");
        std::thread::sleep(Duration::from_millis(100));
    }
    sandbox_replies(
        &client,
        &server,
        "whatsapp",
        &[("ack-1", "+231770000501", "OK received")],
    );
    let ack = loop {
        let b = get(
            &client,
            &server,
            &sender,
            &format!("/fhir/r4/Communication?based-on=CommunicationRequest/{id}"),
        );
        if let Some(a) = b["entry"].as_array().and_then(|e| {
            e.iter()
                .find(|x| x["resource"]["id"] == format!("{id}-ack"))
        }) {
            break a["resource"].clone();
        }
        assert!(Instant::now() < deadline, "no acknowledgement: {b}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(ack["payload"][0]["contentString"], "OK received");
    assert_eq!(ack["sender"]["reference"], "Practitioner/DR-7");
    assert_eq!(ack["about"][0]["identifier"]["value"], "LAB-1");
    let (_, inbound) = get_json(&client, &server, &sender, "/v1/inbound?route=lab_ack");
    assert_eq!(inbound.as_array().unwrap().len(), 1, "{inbound}");
    assert!(server.stop().success());

    // SMS first, and insecure: a notice only, no result, no test, no patient.
    let server = start(&data, &config, "\"sms\", \"whatsapp\"");
    let (status, sent) = post(
        &client,
        &server,
        &sender,
        &report("LAB-2", json!({"reference": "#clinician"})),
    );
    assert_eq!(status, StatusCode::CREATED, "{sent}");
    assert_eq!(sent["extension"][0]["valueBoolean"], false);
    let request = get(
        &client,
        &server,
        &sender,
        &format!(
            "/fhir/r4/CommunicationRequest/{}",
            sent["id"].as_str().unwrap()
        ),
    );
    let text = request["payload"][0]["contentString"].as_str().unwrap();
    assert!(text.contains("ref LAB-2"), "{text}");
    for secret in ["POSITIVE", "Haemoglobin", "Malaria", "0042", "ACT"] {
        assert!(!text.contains(secret), "{secret:?} in {text}");
    }
    assert!(server.stop().success());
}
