//! Flash surveys through the real server: started over HTTP from a FHIR
//! Questionnaire, answered by workers whose replies reach the sandbox
//! channel's webhook (signed, as the gateway signs them), results read as
//! JSON, CSV and FHIR QuestionnaireResponses.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, sandbox_replies, with};

/// A worker's reply as the sandbox gateway delivers it to the webhook.
fn reply(client: &Client, server: &Server, id: &str, from: &str, text: &str) {
    sandbox_replies(client, server, "sms", &[(id, from, text)]);
}

fn survey(client: &Client, server: &Server, token: &str, id: &str) -> Value {
    let (status, v) = get_json(client, server, token, &format!("/v1/surveys/{id}"));
    assert_eq!(status, StatusCode::OK, "{v}");
    v
}

/// A server with one sandbox SMS channel, and a sender's and a viewer's
/// tokens.
fn sms_server(dir: &std::path::Path) -> (Server, Client, String, String) {
    let config = dir.join("mhero.toml");
    std::fs::write(&config, "[channels.sms]\nconnector = \"sandbox\"\n").unwrap();
    let server = Server::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()]);
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let (viewer, _) = make_token(&client, &server, &admin, "viewer");
    (server, client, sender, viewer)
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "{what}: not after 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_survey_started_over_http_is_answered_and_read_back_three_ways() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, sender, viewer) = sms_server(tmp.path());

    let worker = |n: u32, phone: &str, lang: &str| {
        [
            json!({"resource": {"resourceType": "Practitioner", "id": format!("P-{n}"), "active": true,
                "telecom": [{"system": "phone", "value": phone}], "communication": [{"coding": [{"code": lang}]}]}}),
            json!({"resource": {"resourceType": "PractitionerRole", "id": format!("R-{n}"), "active": true,
                "practitioner": {"reference": format!("Practitioner/P-{n}")},
                "code": [{"coding": [{"code": "registered-nurse"}]}]}}),
        ]
    };
    let mut entry = Vec::new();
    entry.extend(worker(1, "+231770000401", "en"));
    entry.extend(worker(2, "+231770000402", "fr"));
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(&json!({"resourceType": "Bundle", "type": "batch", "entry": entry}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");

    let questionnaire = json!({
        "resourceType": "Questionnaire", "id": "cold-chain", "status": "active",
        "url": "https://moh.example/Questionnaire/cold-chain",
        "title": "Cold chain check",
        "item": [
            {"linkId": "fridge", "type": "boolean", "text": "Is your vaccine fridge working?"},
            {"linkId": "temp", "type": "decimal", "text": "Its temperature now (°C)?"},
            {"linkId": "since", "type": "date", "text": "Since when?",
             "enableWhen": [{"question": "fridge", "operator": "=", "answerBoolean": false}]}
        ]
    });
    // A viewer may not start one; a broken Questionnaire is refused with
    // the element named.
    let (status, _) = json_of(
        with(client.post(server.url("/v1/surveys")), &viewer)
            .json_body(&json!({"questionnaire": questionnaire, "selector": "*"}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    let mut broken = questionnaire.clone();
    broken["item"][1]["type"] = json!("attachment");
    let (status, refused) = json_of(
        with(client.post(server.url("/v1/surveys")), &sender)
            .json_body(&json!({"questionnaire": broken, "selector": "*"}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("item[1].type"), "{refused}");

    let (status, created) = json_of(
        with(client.post(server.url("/v1/surveys")), &sender)
            .json_body(
                &json!({"questionnaire": questionnaire, "selector": "role:registered-nurse",
                               "thanks": {"default": "Thank you."}}),
            )
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["sessions"], 2);
    let id = created["id"].as_str().unwrap().to_string();

    // Worker 1: yes, 4.5 — done. Worker 2 (French): non, 8,5, then a
    // date the day first.
    reply(&client, &server, "a1", "+231770000401", "yes");
    reply(&client, &server, "b1", "+231770000402", "non");
    wait_for("both answered the first", || {
        survey(&client, &server, &viewer, &id)["questions"][0]["answered"] == 2
    });
    reply(&client, &server, "a2", "+231770000401", "4.5");
    reply(&client, &server, "b2", "+231770000402", "8,5");
    wait_for("both answered the second", || {
        survey(&client, &server, &viewer, &id)["questions"][1]["answered"] == 2
    });
    reply(&client, &server, "b3", "+231770000402", "27/11/2026");
    wait_for("both finished", || {
        survey(&client, &server, &viewer, &id)["completed"] == 2
    });
    let v = survey(&client, &server, &viewer, &id);
    assert_eq!(v["questions"][0]["options"][0]["count"], 1, "{v}");
    assert_eq!(v["questions"][0]["options"][1]["count"], 1, "{v}");
    assert_eq!(v["questions"][1]["mean"], 6.5, "{v}");
    assert_eq!(v["questions"][2]["asked"], 1, "only who said no: {v}");

    // CSV: one row per worker, a column per question.
    let csv = with(
        client.get(server.url(&format!("/v1/surveys/{id}/responses.csv"))),
        &viewer,
    )
    .send()
    .unwrap()
    .text()
    .unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "contact,source,status,fridge,temp,since");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("Practitioner/P-1,completed,yes,4.5,")),
        "{csv}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("Practitioner/P-2,completed,no,8.5,2026-11-27")),
        "{csv}"
    );

    // FHIR: a searchset of QuestionnaireResponses, by the Questionnaire's url.
    let (status, bundle) = get_json(
        &client,
        &server,
        &viewer,
        "/fhir/r4/QuestionnaireResponse?questionnaire=https://moh.example/Questionnaire/cold-chain",
    );
    assert_eq!(status, StatusCode::OK, "{bundle}");
    let responses: Vec<&Value> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["resource"])
        .collect();
    assert_eq!(responses.len(), 2);
    let second = responses
        .iter()
        .find(|r| r["subject"]["reference"] == "Practitioner/P-2")
        .unwrap();
    assert_eq!(second["resourceType"], "QuestionnaireResponse");
    assert_eq!(second["status"], "completed");
    assert_eq!(second["item"][0]["answer"][0]["valueBoolean"], false);
    assert_eq!(second["item"][1]["answer"][0]["valueDecimal"], 8.5);
    assert_eq!(second["item"][2]["answer"][0]["valueDate"], "2026-11-27");

    // The answers are in the inbound list, routed to the survey.
    let (_, inbound) = get_json(&client, &server, &viewer, "/v1/inbound?route=survey");
    assert_eq!(inbound.as_array().unwrap().len(), 5, "{inbound}");
    // The newest two (a dashboard's latest) are the tail of the whole list.
    let (_, all) = get_json(&client, &server, &viewer, "/v1/inbound");
    let seqs = |v: &serde_json::Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    };
    let all = seqs(&all);
    assert!(all.len() > 2, "{all:?}");
    let (status, newest) = get_json(&client, &server, &viewer, "/v1/inbound?newest=true&limit=2");
    assert_eq!(status, StatusCode::OK, "{newest}");
    assert_eq!(seqs(&newest), all[all.len() - 2..]);
    let (status, both) = get_json(&client, &server, &viewer, "/v1/inbound?newest=true&after=1");
    assert_eq!(status, StatusCode::BAD_REQUEST, "{both}");
    assert!(server.stop().success());
}

#[test]
fn a_course_over_http_sends_lessons_scores_its_quiz_and_reports_progress() {
    let tmp = tempfile::tempdir().unwrap();
    let (server, client, sender, viewer) = sms_server(tmp.path());
    let mut entry = Vec::new();
    for (n, phone) in [(1, "+231770000451"), (2, "+231770000452")] {
        entry.push(json!({"resource": {"resourceType": "Practitioner", "id": format!("C-{n}"), "active": true,
            "telecom": [{"system": "phone", "value": phone}]}}));
        entry.push(json!({"resource": {"resourceType": "PractitionerRole", "id": format!("CR-{n}"), "active": true,
            "practitioner": {"reference": format!("Practitioner/C-{n}")},
            "code": [{"coding": [{"code": "chw"}]}]}}));
    }
    let (status, imported) = json_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(&json!({"resourceType": "Bundle", "type": "batch", "entry": entry}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{imported}");

    let quiz = json!({"resourceType": "Questionnaire", "status": "active", "title": "Malaria quiz",
    "item": [
        {"linkId": "rdt", "type": "boolean", "text": "Test with an RDT before treating?"},
        {"linkId": "drug", "type": "choice", "text": "First-line treatment?",
         "answerOption": [{"valueCoding": {"code": "act", "display": "ACT"}},
                          {"valueCoding": {"code": "chloroquine", "display": "Chloroquine"}}]}
    ]});
    let mut course = json!({
        "name": "Malaria case management",
        "selector": "role:chw",
        "steps": [
            {"lesson": {"default": "Lesson 1: test every fever with an RDT."}},
            {"delay_s": 1, "quiz": quiz, "answers": {"rdt": "yes", "drug": "act"}},
            {"delay_s": 1, "lesson": {"default": "Lesson 2: ACT for three days, even if better."}}
        ],
        "completion": {"default": "Course completed. Thank you."}
    });
    // A step that is both is refused, naming it; a viewer may not create.
    let mut both = course.clone();
    both["steps"][0]["quiz"] = course["steps"][1]["quiz"].clone();
    let (status, refused) = json_of(
        with(client.post(server.url("/v1/courses")), &sender)
            .json_body(&both)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused.to_string().contains("steps[0]"), "{refused}");
    let (status, _) = json_of(
        with(client.post(server.url("/v1/courses")), &viewer)
            .json_body(&course)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::FORBIDDEN);
    course["channels"] = json!(["sms"]);
    let (status, created) = json_of(
        with(client.post(server.url("/v1/courses")), &sender)
            .json_body(&course)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["enrolled"], 2);
    let id = created["id"].as_str().unwrap().to_string();
    let get = |path: &str| {
        let (status, v) = get_json(&client, &server, &viewer, path);
        assert_eq!(status, StatusCode::OK, "{path}: {v}");
        v
    };
    let progress = || get(&format!("/v1/courses/{id}/progress"));
    wait_for("both in the quiz", || {
        progress()
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["state"] == "in_quiz")
    });
    let c = get(&format!("/v1/courses/{id}"));
    let survey_id = c["steps"][1]["survey"].as_str().unwrap().to_string();
    assert_eq!(c["steps"][0]["done"], 2, "{c}");

    // Worker 1 gets both right, worker 2 one of two.
    reply(&client, &server, "m1", "+231770000451", "yes");
    reply(&client, &server, "m2", "+231770000452", "no");
    wait_for("both answered the first", || {
        survey(&client, &server, &viewer, &survey_id)["questions"][0]["answered"] == 2
    });
    reply(&client, &server, "m3", "+231770000451", "1");
    reply(&client, &server, "m4", "+231770000452", "1");
    wait_for("both completed the course", || {
        get(&format!("/v1/courses/{id}"))["completed"] == 2
    });
    let c = get(&format!("/v1/courses/{id}"));
    assert_eq!(c["steps"][1]["mean_score"], 0.75, "{c}");
    assert_eq!(c["steps"][2]["done"], 2, "{c}");
    let p = progress();
    assert_eq!(p[0]["source"], "Practitioner/C-1", "{p}");
    assert_eq!(p[0]["lessons_sent"], 2);
    assert_eq!(
        p[0]["quizzes"],
        json!([{"step": 2, "right": 2, "questions": 2}])
    );
    assert_eq!(
        p[1]["quizzes"],
        json!([{"step": 2, "right": 1, "questions": 2}])
    );
    assert!(p[1]["completed_ms"].as_u64().is_some(), "{p}");
    assert!(server.stop().success());
}
