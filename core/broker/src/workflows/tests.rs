//! Flash surveys: the Questionnaire reader, and whole surveys through the
//! composition root with workers' replies scripted at the sandbox gateway.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::questionnaire::{self, Answer, Kind};
use super::survey::{self, SessionState, SurveySpec, Unanswered};
use crate::Broker;
use crate::config::Config;
use crate::directory::{Incoming, IncomingContact, IncomingPlace};
use crate::dispatch::Body;
use crate::store::{Batch, Cf, Engine, MemoryEngine, Op, Ticket};
use crate::testkit::{broker_on, phone_worker};

const START_MS: u64 = 1_800_000_000_000;

/// Stock check: ORS in stock? → how many (only if yes) → main problem.
fn stock_check() -> Value {
    json!({
        "resourceType": "Questionnaire",
        "id": "stock-check",
        "url": "https://moh.example/Questionnaire/stock-check",
        "status": "active",
        "title": "ORS stock check",
        "item": [
            {"linkId": "intro", "type": "display", "text": "Ministry of Health flash survey."},
            {"linkId": "has-ors", "type": "boolean", "text": "Do you have ORS in stock?",
             "_text": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/translation",
                 "extension": [{"url": "lang", "valueCode": "fr"}, {"url": "content", "valueString": "Avez-vous du SRO en stock ?"}]}]}},
            {"linkId": "packets", "type": "integer", "text": "How many packets?",
             "enableWhen": [{"question": "has-ors", "operator": "=", "answerBoolean": true}]},
            {"linkId": "problem", "type": "choice", "text": "Main problem this week?",
             "answerOption": [
                 {"valueCoding": {"system": "https://moh.example/problems", "code": "stockout", "display": "Stock-out"}},
                 {"valueCoding": {"system": "https://moh.example/problems", "code": "transport", "display": "Transport"}},
                 {"valueString": "Other"}
             ]}
        ]
    })
}

fn worker(id: &str, phone: &str, language: &str) -> IncomingContact {
    IncomingContact {
        languages: vec![language.into()],
        roles: vec!["nurse".into()],
        ..phone_worker(id, phone)
    }
}

async fn open(engine: Arc<dyn Engine>, at_ms: u64) -> Broker {
    open_with(engine, at_ms, |_| {}).await
}

async fn open_with(
    engine: Arc<dyn Engine>,
    at_ms: u64,
    change: impl FnOnce(&mut Config),
) -> Broker {
    broker_on(engine, at_ms, &["sms"], change).await
}

/// Waits until `f` holds (the test fails after 60 s of test time).
async fn until(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..1200 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not after 60 s");
}

fn session(b: &Broker, survey: u64, contact: u32) -> survey::Session {
    b.surveys()
        .sessions(survey, contact.checked_sub(1), 1)
        .unwrap()
        .into_iter()
        .find(|s| s.contact == contact)
        .unwrap()
}

/// Nurses 1 (English), 2 (French) and 3 (English), by directory number.
fn three_nurses(b: &Broker) -> (u32, u32, u32) {
    b.directory()
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![
                    worker("1", "0770000001", "en"),
                    worker("2", "0770000002", "fr"),
                    worker("3", "0770000003", "en"),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    let number = |id: &str| {
        b.directory()
            .find(&format!("Practitioner/{id}"))
            .unwrap()
            .unwrap()
            .number
    };
    (number("1"), number("2"), number("3"))
}

#[tokio::test(start_paused = true)]
async fn a_survey_asks_one_question_at_a_time_and_survives_a_restart() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let b = open(Arc::clone(&engine), START_MS).await;
    let (one, two, three) = three_nurses(&b);
    let now = b.dispatcher().now_ms();
    let (record, out) = b
        .surveys()
        .create(
            SurveySpec {
                questionnaire: stock_check(),
                selector: "role:nurse".into(),
                channels: Vec::new(),
                lane: None,
                question_timeout_s: Some(600),
                deadline_ms: None,
                thanks: Some(Body::text("Thank you.")),
            },
            vec!["sms".into()],
            now,
        )
        .unwrap();
    assert_eq!(record.sessions, 3);
    let texts: Vec<&str> = out.iter().map(|o| o.text.as_str()).collect();
    assert!(
        texts.contains(&"Ministry of Health flash survey.\nDo you have ORS in stock?\nReply 1 for Yes, 2 for No"),
        "{texts:?}"
    );
    assert!(
        texts
            .iter()
            .any(|t| t.contains("Avez-vous du SRO en stock ?\nRépondez 1 pour Oui, 2 pour Non")),
        "the French-speaking worker is asked in French: {texts:?}"
    );
    assert!(
        super::send(b.surveys(), &b.dispatcher().submitter(), out)
            .await
            .is_empty()
    );
    let id = record.id;

    let sms = b.sandbox("sms").unwrap();
    // Worker 1 says yes: asked how many.
    sms.worker_sends("a1", "+231770000001", "yes", b.dispatcher().now_ms());
    until("worker 1 at question 2", || {
        session(&b, id, one).question == 1
    })
    .await;
    b.shutdown().await;

    // A restart between questions: the session goes on from where it was.
    let b = open(Arc::clone(&engine), START_MS + 60_000).await;
    let sms = b.sandbox("sms").unwrap();
    let t = b.dispatcher().now_ms();
    sms.worker_sends("a2", "+231770000001", "twelve", t);
    // Worker 2 says no (in French): the count is skipped.
    sms.worker_sends("b1", "+231770000002", "non", t);
    until("both moved on", || {
        session(&b, id, one).question == 2 && session(&b, id, two).question == 2
    })
    .await;
    sms.worker_sends("a3", "+231770000001", "2", b.dispatcher().now_ms());
    // Worker 2 answers what is not an option, twice.
    sms.worker_sends("b2", "+231770000002", "banana", b.dispatcher().now_ms());
    until("worker 2 re-asked", || session(&b, id, two).attempts == 1).await;
    sms.worker_sends(
        "b3",
        "+231770000002",
        "bananas again",
        b.dispatcher().now_ms(),
    );
    until("workers 1 and 2 done", || {
        session(&b, id, one).state == SessionState::Completed
            && session(&b, id, two).state == SessionState::Completed
    })
    .await;
    // Worker 3 never answers: each question times out, then the next is
    // asked (the count is skipped: its condition needs an answer).
    tokio::time::sleep(Duration::from_secs(1300)).await;
    until("worker 3 timed out twice", || {
        session(&b, id, three).state == SessionState::Completed
    })
    .await;

    let s1 = session(&b, id, one);
    assert_eq!(
        s1.answers,
        [
            (0, Answer::Boolean(true)),
            (1, Answer::Integer(12)),
            (2, Answer::Choice(1))
        ]
    );
    let s2 = session(&b, id, two);
    assert_eq!(s2.answers, [(0, Answer::Boolean(false))]);
    assert_eq!(s2.unanswered, [(2, Unanswered::NotUnderstood)]);
    let s3 = session(&b, id, three);
    assert!(s3.answers.is_empty());
    assert_eq!(
        s3.unanswered,
        [(0, Unanswered::TimedOut), (2, Unanswered::TimedOut)]
    );

    let a = b.surveys().aggregate(id).unwrap().unwrap();
    assert_eq!(a.completed, 3);
    let q = |link: &str| {
        let i = record
            .parsed
            .questions
            .iter()
            .position(|q| q.link_id == link)
            .unwrap();
        a.questions[i].clone()
    };
    let has_ors = q("has-ors");
    assert_eq!(
        (has_ors.asked, has_ors.answered, has_ors.timed_out),
        (3, 2, 1)
    );
    assert_eq!(has_ors.counts, [1, 1]);
    let packets = q("packets");
    assert_eq!((packets.asked, packets.answered, packets.sum), (1, 1, 12.0));
    let problem = q("problem");
    assert_eq!(
        (
            problem.asked,
            problem.answered,
            problem.not_understood,
            problem.timed_out
        ),
        (3, 1, 2, 1)
    );
    assert_eq!(problem.counts, [0, 1, 0]);
    // Every answer went through the inbound pipeline as `survey`.
    let routes: Vec<String> = b
        .store()
        .processed_inbound(0, 100)
        .unwrap()
        .into_iter()
        .map(|(_, _, r)| r.route)
        .collect();
    assert_eq!(routes.len(), 6);
    assert!(routes.iter().all(|r| r == "survey"), "{routes:?}");
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn stop_ends_a_session_and_a_new_survey_takes_the_answers() {
    let b = open(Arc::new(MemoryEngine::new()), START_MS).await;
    b.directory()
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![
                    worker("1", "0770000001", "en"),
                    worker("2", "0770000002", "en"),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    let spec = || SurveySpec {
        questionnaire: stock_check(),
        selector: "*".into(),
        channels: Vec::new(),
        lane: None,
        question_timeout_s: None,
        deadline_ms: None,
        thanks: None,
    };
    let now = b.dispatcher().now_ms();
    let (first, out) = b.surveys().create(spec(), vec!["sms".into()], now).unwrap();
    super::send(b.surveys(), &b.dispatcher().submitter(), out).await;
    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("x1", "+231770000001", "STOP", b.dispatcher().now_ms());
    let one = b.directory().find("+231770000001").unwrap().unwrap().number;
    until("worker 1 stopped", || {
        session(&b, first.id, one).state == SessionState::Stopped
    })
    .await;
    assert!(
        b.directory()
            .contact(one)
            .unwrap()
            .unwrap()
            .opted_out
            .is_some()
    );
    assert_eq!(b.surveys().aggregate(first.id).unwrap().unwrap().stopped, 1);

    // A second survey: worker 2's next answer goes to it.
    let (second, out) = b
        .surveys()
        .create(spec(), vec!["sms".into()], b.dispatcher().now_ms())
        .unwrap();
    assert_eq!(second.sessions, 1, "the opted-out worker is not asked");
    super::send(b.surveys(), &b.dispatcher().submitter(), out).await;
    sms.worker_sends("y1", "+231770000002", "1", b.dispatcher().now_ms());
    let two = b.directory().find("+231770000002").unwrap().unwrap().number;
    until("worker 2 answered the second", || {
        session(&b, second.id, two).question == 1
    })
    .await;
    assert_eq!(session(&b, first.id, two).question, 0, "the first waits");
    b.shutdown().await;
}

#[test]
fn questionnaires_are_read_with_their_branching_and_errors_named() {
    let parsed = questionnaire::parse(&stock_check()).unwrap();
    assert_eq!(parsed.title, "ORS stock check");
    let kinds: Vec<Kind> = parsed.questions.iter().map(|q| q.kind).collect();
    assert_eq!(kinds, [Kind::Boolean, Kind::Integer, Kind::Choice]);
    assert!(
        parsed.questions[0].preface.is_some(),
        "the display item leads"
    );
    assert_eq!(
        parsed.questions[0].text.variants["fr"],
        "Avez-vous du SRO en stock ?"
    );
    let packets = &parsed.questions[1];
    assert!(packets.enabled(&[(0, Answer::Boolean(true))]));
    assert!(!packets.enabled(&[(0, Answer::Boolean(false))]));
    assert!(!packets.enabled(&[]));

    let broken = |f: &dyn Fn(&mut Value)| {
        let mut q = stock_check();
        f(&mut q);
        questionnaire::parse(&q).unwrap_err()
    };
    assert!(broken(&|q| q["resourceType"] = json!("Patient")).contains("Questionnaire"));
    assert!(broken(&|q| q["item"][1]["type"] = json!("attachment")).contains("item[1].type"));
    assert!(broken(&|q| q["item"][3]["answerOption"] = json!([])).contains("item[3].answerOption"));
    assert!(
        broken(&|q| q["item"][2]["enableWhen"][0]["question"] = json!("later"))
            .contains("not an earlier question")
    );
    assert!(broken(&|q| q["item"][2]["linkId"] = json!("has-ors")).contains("used twice"));
    assert!(broken(&|q| q["item"] = json!([])).contains("no question"));
}

#[test]
fn answers_are_read_by_type() {
    let parsed = questionnaire::parse(&stock_check()).unwrap();
    let [has, packets, problem] = [0, 1, 2].map(|i| parsed.questions[i].clone());
    let none: Vec<(String, String)> = Vec::new();
    let number = |n: &str| vec![("number".to_string(), n.to_string())];
    assert_eq!(
        survey::interpret(&has, "ndiyo", "yes", &none),
        Some(Answer::Boolean(true))
    );
    assert_eq!(
        survey::interpret(&has, "2", "unknown", &none),
        Some(Answer::Boolean(false))
    );
    assert_eq!(survey::interpret(&has, "maybe", "unknown", &none), None);
    assert_eq!(
        survey::interpret(&packets, "twelve", "number", &number("12")),
        Some(Answer::Integer(12))
    );
    assert_eq!(
        survey::interpret(&packets, "1.5", "number", &number("1.5")),
        None
    );
    let choice = vec![("choice-index".to_string(), "3".to_string())];
    assert_eq!(
        survey::interpret(&problem, "3", "Other", &choice),
        Some(Answer::Choice(2))
    );
    assert_eq!(
        survey::interpret(&problem, "transport", "unknown", &none),
        Some(Answer::Choice(1)),
        "an option's code"
    );
    assert_eq!(survey::date("2026-11-29").as_deref(), Some("2026-11-29"));
    assert_eq!(survey::date("29/11/2026").as_deref(), Some("2026-11-29"));
    assert_eq!(survey::date("31/02/2026"), None);
    assert_eq!(survey::date("soon"), None);
}

#[tokio::test(start_paused = true)]
async fn an_answer_after_the_deadline_is_not_taken_and_goes_to_the_inbox() {
    let b = open(Arc::new(MemoryEngine::new()), START_MS).await;
    let (one, _, _) = three_nurses(&b);
    let now = b.dispatcher().now_ms();
    let (survey, out) = b
        .surveys()
        .create(
            SurveySpec {
                questionnaire: stock_check(),
                selector: "role:nurse".into(),
                channels: Vec::new(),
                lane: None,
                question_timeout_s: Some(86_400),
                deadline_ms: Some(now + 60_000),
                thanks: None,
            },
            vec!["sms".into()],
            now,
        )
        .unwrap();
    assert!(
        super::send(b.surveys(), &b.dispatcher().submitter(), out)
            .await
            .is_empty()
    );
    // Past the deadline, worker 1 answers "yes".
    tokio::time::sleep(Duration::from_secs(61)).await;
    let sms = b.sandbox("sms").unwrap();
    sms.worker_sends("late", "+231770000001", "yes", b.dispatcher().now_ms());
    until("the late answer processed", || {
        b.store()
            .processed_inbound(0, 10)
            .unwrap()
            .iter()
            .any(|(_, m, _)| m.text == "yes")
    })
    .await;
    let (_, _, result) = b
        .store()
        .processed_inbound(0, 10)
        .unwrap()
        .into_iter()
        .find(|(_, m, _)| m.text == "yes")
        .unwrap();
    assert_eq!(result.route, "inbox", "a closed survey takes nothing");
    let s = session(&b, survey.id, one);
    assert!(s.answers.is_empty(), "{s:?}");
    let a = b.surveys().aggregate(survey.id).unwrap().unwrap();
    assert_eq!(a.questions[0].answered, 0);
    b.shutdown().await;
}

/// Country → county → two districts → three facilities; a nurse in each
/// facility of district 1, one in district 2, and a pharmacist per
/// district.
fn stock_directory(b: &Broker) {
    let place = |id: &str, name: &str, parent: Option<&str>, kind: &str| IncomingPlace {
        id: format!("Location/{id}"),
        name: name.into(),
        parent: parent.map(|p| format!("Location/{p}")),
        kind: Some(kind.into()),
    };
    let at = |id: &str, phone: &str, role: &str, facility: &str| IncomingContact {
        roles: vec![role.into()],
        facilities: vec![format!("Location/{facility}")],
        ..worker(id, phone, "en")
    };
    b.directory()
        .import(
            "ihris",
            "LR",
            Incoming {
                places: vec![
                    place("LR", "Liberia", None, "country"),
                    place("bong", "Bong", Some("LR"), "county"),
                    place("D1", "Bong district 1", Some("bong"), "district"),
                    place("D2", "Bong district 2", Some("bong"), "district"),
                    place("F1", "Facility 1", Some("D1"), "facility"),
                    place("F2", "Facility 2", Some("D1"), "facility"),
                    place("F3", "Facility 3", Some("D2"), "facility"),
                ],
                contacts: vec![
                    at("n1", "0770000001", "nurse", "F1"),
                    at("n2", "0770000002", "nurse", "F2"),
                    at("n3", "0770000003", "nurse", "F3"),
                    at("p1", "0770000011", "pharmacist", "F2"),
                    at("p2", "0770000012", "pharmacist", "F3"),
                    IncomingContact {
                        roles: vec!["nurse".into()],
                        ..worker("n4", "0770000004", "en")
                    },
                ],
                ..Default::default()
            },
        )
        .unwrap();
}

async fn processed(
    b: &Broker,
    n: usize,
) -> Vec<(
    u64,
    crate::store::InboundRecord,
    crate::store::InboundResult,
)> {
    until(&format!("{n} replies processed"), || {
        b.store().processed_inbound(0, 10_000).unwrap().len() >= n
    })
    .await;
    b.store().processed_inbound(0, 10_000).unwrap()
}

/// Alert campaigns, by name: (recipients, text).
fn alerts(b: &Broker) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = b
        .dispatcher()
        .all_progress()
        .into_iter()
        .filter(|p| p.name.contains(" alert r"))
        .map(|p| (p.name, p.total))
        .collect();
    out.sort();
    out
}

#[tokio::test(start_paused = true)]
async fn reports_roll_up_by_the_hierarchy_and_alert_the_district() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let b = open_with(Arc::clone(&engine), START_MS, |c| {
        c.reports.low_stock.insert("AMOX".into(), 50);
    })
    .await;
    stock_directory(&b);
    let sms = b.sandbox("sms").unwrap();
    let now = b.dispatcher().now_ms();
    sms.worker_sends("r1", "+231770000001", "STOCK AMOX 120 ORS 0", now);
    sms.worker_sends("r2", "+231770000002", "stock amoxicillin 30 sro 15", now);
    sms.worker_sends("r3", "+231770000003", "STOCK AMOX 400", now);
    // Not counted: no facility; not in the directory; no item read.
    sms.worker_sends("r4", "+231770000004", "STOCK AMOX 5", now);
    sms.worker_sends("r5", "+231779999999", "STOCK AMOX 5", now);
    sms.worker_sends("r6", "+231770000003", "STOCK PLEASE", now);
    let events = processed(&b, 6).await;
    let result = |text: &str, from: &str| {
        events
            .iter()
            .find(|(_, m, _)| m.text == text && m.from.ends_with(from))
            .map(|(_, _, r)| r.clone())
            .unwrap()
    };
    let r1 = result("STOCK AMOX 120 ORS 0", "0001");
    assert_eq!((r1.route.as_str(), r1.label.as_str()), ("stock", "stock"));
    assert!(r1.problems.is_empty(), "{:?}", r1.problems);
    assert!(
        result("STOCK AMOX 5", "0004").problems[0].contains("no facility"),
        "a worker with no facility is told why"
    );
    assert!(result("STOCK AMOX 5", "9999").problems[0].contains("not in the directory"));
    assert!(!result("STOCK PLEASE", "0003").problems.is_empty());

    // ORS ran out at facility 1 and AMOX is low at facility 2: district 1's
    // pharmacist hears of each, district 2's of nothing.
    until("two alerts", || alerts(&b).len() == 2).await;
    let a = alerts(&b);
    assert!(
        a[0].0.starts_with("stock alert r") && a[0].0.ends_with(": Facility 1"),
        "{a:?}"
    );
    assert!(
        a[1].0.starts_with("stock alert r") && a[1].0.ends_with(": Facility 2"),
        "{a:?}"
    );
    assert!(
        a.iter().all(|(_, n)| *n == 1),
        "one pharmacist in district 1: {a:?}"
    );

    let rollup = |within: Option<&str>, level: Option<&str>| {
        b.reports()
            .rollup(b.directory(), "stock", within, level)
            .into_iter()
            .map(|r| {
                (
                    r.place,
                    r.item,
                    (r.facilities, r.quantity, r.stocked_out, r.low),
                )
            })
            .collect::<Vec<_>>()
    };
    let districts = rollup(None, Some("district"));
    assert_eq!(
        districts,
        [
            ("Location/D1".into(), "ORS".into(), (2, 15, 1, 0)),
            ("Location/D1".into(), "AMOX".into(), (2, 150, 0, 1)),
            ("Location/D2".into(), "AMOX".into(), (1, 400, 0, 0)),
        ],
        "stock-outs first, then low stock"
    );
    assert_eq!(
        rollup(Some("Location/bong"), Some("county")),
        [
            ("Location/bong".into(), "ORS".into(), (2, 15, 1, 0)),
            ("Location/bong".into(), "AMOX".into(), (3, 550, 0, 1)),
        ]
    );
    assert_eq!(
        rollup(Some("Location/D2"), None),
        [
            ("Location/D2".into(), "AMOX".into(), (1, 400, 0, 0)),
            ("Location/F3".into(), "AMOX".into(), (1, 400, 0, 0)),
        ],
        "within a place: it and what is inside it"
    );

    // Still out: no second alert. Restocked, then out again: alerted again.
    let t = b.dispatcher().now_ms();
    sms.worker_sends("r7", "+231770000001", "STOCK ORS 0", t);
    sms.worker_sends("r8", "+231770000001", "STOCK ORS 200", t + 1);
    processed(&b, 8).await;
    // (The same text from the same worker within the duplicate window
    // would be a duplicate.)
    tokio::time::sleep(Duration::from_secs(601)).await;
    sms.worker_sends(
        "r9",
        "+231770000001",
        "STOCK ORS 0",
        b.dispatcher().now_ms(),
    );
    until("a third alert", || alerts(&b).len() == 3).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(alerts(&b).len(), 3, "a stock already out alerts once");

    // Cases add up; a watched disease alerts the district at once.
    let t = b.dispatcher().now_ms();
    sms.worker_sends("c1", "+231770000003", "CASE MALARIA 5", t);
    sms.worker_sends("c2", "+231770000003", "CASES MALARIA 3 CHOLERA 2", t + 1);
    until("the cholera alert", || alerts(&b).len() == 4).await;
    assert!(
        alerts(&b)
            .iter()
            .any(|(name, n)| name.starts_with("case alert r")
                && name.ends_with(": Facility 3")
                && *n == 1),
        "district 2's pharmacist: {:?}",
        alerts(&b)
    );
    let malaria = b
        .reports()
        .figure("case", "Location/F3", "MALARIA")
        .unwrap();
    assert_eq!((malaria.quantity, malaria.last, malaria.reports), (8, 3, 2));
    let reports = b.reports().reports(None, 100).unwrap();
    assert_eq!(reports.len(), 8, "every counted report is kept");
    b.shutdown().await;

    // The figures are read back after a restart.
    let b = open(Arc::clone(&engine), START_MS + 60_000).await;
    assert_eq!(
        b.reports()
            .rollup(
                b.directory(),
                "stock",
                Some("Location/D1"),
                Some("district")
            )
            .len(),
        2
    );
    let ors = b.reports().figure("stock", "Location/F1", "ORS").unwrap();
    assert_eq!((ors.quantity, ors.level), (0, super::reports::Level::Out));
    b.shutdown().await;
}

fn hand_washing_quiz() -> Value {
    json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "title": "Hand hygiene quiz",
        "item": [
            {"linkId": "before", "type": "boolean", "text": "Wash hands before touching a patient?"},
            {"linkId": "how-long", "type": "choice", "text": "For how long?",
             "answerOption": [{"valueCoding": {"code": "20s", "display": "20 seconds"}},
                              {"valueCoding": {"code": "5s", "display": "5 seconds"}}]}
        ]
    })
}

fn course_spec() -> super::courses::CourseSpec {
    serde_json::from_value(json!({
        "name": "Hand hygiene",
        "selector": "role:nurse",
        "steps": [
            {"lesson": {"default": "Lesson 1: the five moments for hand hygiene.",
                        "variants": {"fr": "Leçon 1 : les cinq moments de l'hygiène des mains."}}},
            {"delay_s": 600, "quiz": hand_washing_quiz(), "answers": {"before": "yes", "how-long": "20s"}},
            {"delay_s": 1200, "lesson": {"default": "Lesson 2: gloves do not replace hand washing."}}
        ],
        "question_timeout_s": 300,
        "completion": {"default": "You completed the hand hygiene course."}
    }))
    .unwrap()
}

/// Course campaigns by name (one per language): recipients.
fn course_campaigns(b: &Broker) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for p in b.dispatcher().all_progress() {
        if p.name.starts_with("course c") {
            *out.entry(p.name).or_default() += p.total;
        }
    }
    out
}

/// One worker's progress in a course.
fn course_progress(b: &Broker, course: u64, contact: u32) -> super::courses::Progress {
    b.courses()
        .progress(course, contact.checked_sub(1), 1)
        .unwrap()
        .into_iter()
        .find(|p| p.contact == contact)
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_course_sends_lessons_on_schedule_scores_its_quiz_and_survives_a_restart() {
    use super::courses::ProgressState;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let b = open(Arc::clone(&engine), START_MS).await;
    let (one, two, three) = three_nurses(&b);

    // A quiz key that names no question is refused, naming it.
    let mut wrong = course_spec();
    wrong.steps[1]
        .answers
        .insert("how-often".into(), "1".into());
    let err = b
        .courses()
        .create(wrong, vec!["sms".into()], b.dispatcher().now_ms())
        .unwrap_err();
    assert!(
        err.to_string().contains("steps[1].answers.how-often"),
        "{err}"
    );

    let course = b
        .courses()
        .create(course_spec(), vec!["sms".into()], b.dispatcher().now_ms())
        .unwrap();
    assert_eq!(course.enrolled, 3);
    let id = course.id;
    let progress = |b: &Broker, contact: u32| course_progress(b, id, contact);
    // The tally the course's view reads, kept as progress changes: always
    // what a scan of every worker's progress counts.
    let tallied = |b: &Broker| {
        let kept = b.courses().tally(id).unwrap();
        let scanned =
            super::courses::tally_by_scan(&*engine, &b.courses().get(id).unwrap()).unwrap();
        assert_eq!(kept, scanned);
        kept
    };
    assert_eq!(tallied(&b).done, [0, 0, 0]);
    // The first lesson at once, in each worker's language.
    until("lesson 1 sent", || {
        course_campaigns(&b)
            .iter()
            .filter(|(n, _)| n.starts_with(&format!("course c{id} step 1")))
            .map(|(_, t)| t)
            .sum::<u64>()
            == 3
    })
    .await;
    assert_eq!(progress(&b, one).lessons_sent, 1);
    assert_eq!(progress(&b, one).step, 1);
    assert_eq!(tallied(&b).done, [3, 0, 0]);

    // Ten minutes later, the quiz, through the survey engine.
    tokio::time::sleep(Duration::from_secs(600)).await;
    until("the quiz begun", || {
        progress(&b, one).state == ProgressState::InQuiz
    })
    .await;
    let sms = b.sandbox("sms").unwrap();
    let t = b.dispatcher().now_ms();
    sms.worker_sends("q1", "+231770000001", "1", t);
    sms.worker_sends("q2", "+231770000002", "2", t);
    sms.worker_sends("q3", "+231770000003", "STOP", t);
    let Some(super::courses::Step::Quiz { survey, .. }) = course.steps.get(1).cloned() else {
        panic!("step 2 is the quiz");
    };
    until("the first answers taken", || {
        session(&b, survey, one).question == 1 && session(&b, survey, two).question == 1
    })
    .await;
    let t = b.dispatcher().now_ms();
    sms.worker_sends("q4", "+231770000001", "1", t);
    sms.worker_sends("q5", "+231770000002", "1", t);
    until("the quiz answered", || {
        session(&b, survey, one).state == SessionState::Completed
            && session(&b, survey, two).state == SessionState::Completed
    })
    .await;
    b.shutdown().await;

    // A restart: the course goes on where it was.
    let b = open(Arc::clone(&engine), START_MS + 700_000).await;
    tokio::time::sleep(Duration::from_secs(
        super::courses::QUIZ_CHECK_MS / 1000 + 1,
    ))
    .await;
    until("the quiz scored", || {
        progress(&b, one).scores.len() == 1 && progress(&b, two).scores.len() == 1
    })
    .await;
    assert_eq!(progress(&b, one).scores, [(1, 2, 2)]);
    assert_eq!(progress(&b, two).scores, [(1, 1, 2)]);
    assert_eq!(
        progress(&b, three).state,
        ProgressState::Stopped,
        "STOP ends the course"
    );
    assert_eq!(progress(&b, one).state, ProgressState::Waiting);
    let t = tallied(&b);
    assert_eq!((&t.done, t.stopped), (&vec![3, 2, 0], 1));
    assert_eq!(t.mean_score(1), Some(0.75), "2 of 2 and 1 of 2");
    tokio::time::sleep(Duration::from_secs(1200)).await;
    until("completed", || {
        progress(&b, one).state == ProgressState::Completed
            && progress(&b, two).state == ProgressState::Completed
    })
    .await;
    let p = progress(&b, one);
    assert_eq!(p.lessons_sent, 2);
    assert!(p.completed_ms.is_some());
    let t = tallied(&b);
    assert_eq!((&t.done, t.completed, t.stopped), (&vec![3, 2, 2], 2, 1));
    let sent = course_campaigns(&b);
    assert_eq!(
        sent.get(&format!("course c{id} step 3: Hand hygiene")),
        Some(&2),
        "{sent:?}"
    );
    assert_eq!(
        sent.get(&format!("course c{id} completed: Hand hygiene")),
        Some(&2),
        "{sent:?}"
    );
    b.shutdown().await;

    // A course kept without a tally (as before tallies) gets one from a
    // scan when the broker opens.
    let mut batch = crate::store::Batch::new();
    batch.delete(crate::store::Cf::Workflows, super::courses::tally_key(id));
    engine.write(batch).unwrap();
    let b = open(Arc::clone(&engine), START_MS + 2_000_000).await;
    assert!(
        engine
            .get(crate::store::Cf::Workflows, &super::courses::tally_key(id))
            .unwrap()
            .is_some()
    );
    assert_eq!(tallied(&b), t);
    b.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_quiz_ended_by_its_timeout_or_a_stop_moves_the_course_on_at_once() {
    use super::courses::ProgressState;
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let b = open(Arc::clone(&engine), START_MS).await;
    let (one, two, _) = three_nurses(&b);
    // Questions time out after 250 s: the quiz ends between two of the
    // course's periodic looks (every 60 s from the quiz's start).
    let mut spec = course_spec();
    spec.question_timeout_s = Some(250);
    let course = b
        .courses()
        .create(spec, vec!["sms".into()], b.dispatcher().now_ms())
        .unwrap();
    let id = course.id;
    let Some(super::courses::Step::Quiz { survey, .. }) = course.steps.get(1).cloned() else {
        panic!("step 2 is the quiz");
    };
    let progress = |contact: u32| course_progress(&b, id, contact);
    tokio::time::sleep(Duration::from_secs(600)).await;
    until("the quiz begun", || {
        progress(one).state == ProgressState::InQuiz && progress(two).state == ProgressState::InQuiz
    })
    .await;

    // Nurse 2 stops: the course stops with it, not at its next look.
    let sms = b.sandbox("sms").unwrap();
    tokio::time::sleep(Duration::from_secs(17)).await;
    sms.worker_sends("s1", "+231770000002", "STOP", b.dispatcher().now_ms());
    until("the quiz stopped", || {
        session(&b, survey, two).state == SessionState::Stopped
    })
    .await;
    until("the course stopped", || {
        progress(two).state == ProgressState::Stopped
    })
    .await;
    let lag = progress(two).updated_ms - session(&b, survey, two).updated_ms;
    assert!(lag <= 5_000, "the course stopped {lag} ms after the quiz");

    // Nurse 1 answers nothing: both questions time out, the quiz is
    // scored (0 of 2) as it ends, and the course waits for its next step.
    tokio::time::sleep(Duration::from_secs(470)).await;
    until("the quiz timed out", || {
        session(&b, survey, one).state == SessionState::Completed
    })
    .await;
    until("the quiz scored", || progress(one).scores.len() == 1).await;
    assert_eq!(progress(one).scores, [(1, 0, 2)]);
    assert_eq!(progress(one).state, ProgressState::Waiting);
    let lag = progress(one).updated_ms - session(&b, survey, one).updated_ms;
    assert!(lag <= 5_000, "scored {lag} ms after the quiz ended");
    b.shutdown().await;
}

/// An engine that shows each batch to `check` before passing it on. A
/// batch `check` refuses fails unwritten, as one cut short by a crash.
struct Watched {
    inner: Arc<dyn Engine>,
    check: parking_lot::Mutex<Check>,
}

/// Whether a batch may go on to the engine (given to read what it holds).
type Check = Box<dyn FnMut(&dyn Engine, &Batch) -> bool + Send>;

impl Engine for Watched {
    fn get(&self, cf: Cf, key: &[u8]) -> crate::store::Result<Option<Vec<u8>>> {
        self.inner.get(cf, key)
    }

    fn scan(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
        visit: &mut crate::store::engine::Visit<'_>,
    ) -> crate::store::Result<()> {
        self.inner.scan(cf, lower, upper, visit)
    }

    fn scan_rev(
        &self,
        cf: Cf,
        lower: &[u8],
        upper: &[u8],
        visit: &mut crate::store::engine::Visit<'_>,
    ) -> crate::store::Result<()> {
        self.inner.scan_rev(cf, lower, upper, visit)
    }

    fn submit(&self, batch: Batch) -> Ticket {
        if !(self.check.lock())(&*self.inner, &batch) {
            return Ticket::done(Err(crate::store::Error::Internal("cut short".into())));
        }
        self.inner.submit(batch)
    }
}

/// The workflow record (prefix, id) that an entry putting something due
/// for a worker belongs to: a course step's (`d`), a question's
/// timeout (`t`).
fn due_for(op: &Op) -> Option<(u8, [u8; 8])> {
    let Op::Put {
        cf: Cf::Workflows,
        key,
        ..
    } = op
    else {
        return None;
    };
    let record = match key.first() {
        Some(b'd') => b'C',
        Some(b't') => b'S',
        _ => return None,
    };
    (key.len() == 21).then(|| (record, key[9..17].try_into().unwrap()))
}

#[tokio::test(start_paused = true)]
async fn an_enrolment_in_several_batches_makes_nothing_due_before_its_record_and_a_cut_one_leaves_nothing_live()
 {
    let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    // Entries putting a step or a question due, written before the
    // course or survey they belong to.
    let early = Arc::new(parking_lot::Mutex::new(Vec::new()));
    // Enrolment batches (with a worker's progress or session) to let
    // through before one is cut short.
    let cut_after = Arc::new(parking_lot::Mutex::new(None::<usize>));
    let watched = {
        let (early, cut_after) = (Arc::clone(&early), Arc::clone(&cut_after));
        Arc::new(Watched {
            inner: Arc::clone(&memory),
            check: parking_lot::Mutex::new(Box::new(move |inner: &dyn Engine, batch: &Batch| {
                for op in &batch.ops {
                    let Some((prefix, id)) = due_for(op) else {
                        continue;
                    };
                    let mut record = vec![prefix];
                    record.extend_from_slice(&id);
                    let with_it = batch.ops.iter().any(
                        |o| matches!(o, Op::Put { cf: Cf::Workflows, key, .. } if *key == record),
                    );
                    if !with_it && inner.get(Cf::Workflows, &record).unwrap().is_none() {
                        early
                            .lock()
                            .push(format!("{}{}", prefix as char, u64::from_be_bytes(id)));
                    }
                }
                let enrols = batch.ops.iter().any(|o| {
                    matches!(o, Op::Put { cf: Cf::Workflows, key, .. }
                        if matches!(key.first(), Some(b'c' | b's')))
                });
                match &mut *cut_after.lock() {
                    Some(0) if enrols => false,
                    Some(n) if enrols => {
                        *n -= 1;
                        true
                    }
                    _ => true,
                }
            })),
        })
    };
    let b = open(Arc::clone(&watched) as Arc<dyn Engine>, START_MS).await;
    let (one, _, _) = three_nurses(&b);
    let now = b.dispatcher().now_ms();
    let survey_spec = |selector: &str| SurveySpec {
        questionnaire: stock_check(),
        selector: selector.into(),
        channels: Vec::new(),
        lane: None,
        question_timeout_s: Some(600),
        deadline_ms: None,
        thanks: None,
    };
    // A second view of the courses, opened before the course is made, as
    // a check sees a course committed but not yet known.
    let late = super::Courses::open(
        Arc::clone(&watched) as Arc<dyn Engine>,
        Arc::clone(b.directory()),
        Arc::clone(b.surveys()),
    )
    .unwrap();
    // Three workers take several batches each (two writes a batch here).
    let course = b
        .courses()
        .create(course_spec(), vec!["sms".into()], now)
        .unwrap();
    assert_eq!(course.enrolled, 3);
    // Its first step (a lesson, due at once) is found, not dropped.
    let (_, due) = late.due(now).unwrap();
    assert_eq!(due.lessons.len(), 3);
    assert!(due.lessons.iter().all(|l| l.course == course.id));
    let (first, _) = b
        .surveys()
        .create(survey_spec("role:nurse"), vec!["sms".into()], now)
        .unwrap();
    assert_eq!(first.sessions, 3);
    assert_eq!(*early.lock(), Vec::<String>::new());
    let listed = |b: &Broker| -> Vec<u64> { b.surveys().list().iter().map(|s| s.id).collect() };
    // The course's quiz and the survey.
    let surveys = listed(&b);
    assert_eq!(surveys.len(), 2);

    // An enrolment cut short after its first batch: the request fails,
    // and leaves no survey listed (not even the course's quiz).
    *cut_after.lock() = Some(1);
    let e = b.courses().create(course_spec(), vec!["sms".into()], now);
    assert!(e.is_err(), "{e:?}");
    *cut_after.lock() = Some(1);
    let e = b
        .surveys()
        .create(survey_spec("role:nurse"), vec!["sms".into()], now);
    assert!(e.is_err(), "{e:?}");
    *cut_after.lock() = None;
    assert_eq!(*early.lock(), Vec::<String>::new());
    assert_eq!(listed(&b), surveys);
    b.shutdown().await;

    // After a restart, what the cut enrolments wrote is live nowhere: the
    // next course and survey take new ids and show only their own
    // workers, and worker one's replies still go to the first survey.
    let b = open(Arc::clone(&watched) as Arc<dyn Engine>, START_MS + 1000).await;
    assert_eq!(listed(&b), surveys);
    let now = b.dispatcher().now_ms();
    let mut spec = course_spec();
    spec.selector = "lang:fr".into();
    b.courses().create(spec, vec!["sms".into()], now).unwrap();
    b.surveys()
        .create(survey_spec("lang:fr"), vec!["sms".into()], now)
        .unwrap();
    let courses = b.courses().list();
    assert_eq!(courses.len(), 2);
    for c in &courses {
        let workers = b.courses().progress(c.id, None, 100).unwrap();
        assert_eq!(workers.len() as u32, c.enrolled, "course c{}", c.id);
    }
    for s in b.surveys().list() {
        let workers = b.surveys().sessions(s.id, None, 100).unwrap();
        assert_eq!(workers.len() as u32, s.sessions, "survey s{}", s.id);
    }
    assert_eq!(
        b.surveys().session_of(one, now).unwrap().map(|(s, _)| s.id),
        Some(first.id)
    );
    assert_eq!(*early.lock(), Vec::<String>::new());
    b.shutdown().await;
}

/// An id is handed out only once the counter past it is committed, so
/// two creations at once cannot write the counter back and a restart
/// never hands it out again; a claim the store refuses hands out nothing.
#[test]
fn an_id_is_claimed_durably_before_it_is_handed_out() {
    let memory: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let refuse = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let engine = {
        let refuse = Arc::clone(&refuse);
        Watched {
            inner: Arc::clone(&memory),
            check: parking_lot::Mutex::new(Box::new(move |_: &dyn Engine, _: &Batch| {
                !refuse.load(std::sync::atomic::Ordering::SeqCst)
            })),
        }
    };
    let stored = || -> u64 {
        crate::store::decode_value(&memory.get(Cf::Workflows, b"Nx").unwrap().unwrap()).unwrap()
    };
    let ids = super::Ids::open(&engine, b"Nx").unwrap();
    assert_eq!(ids.claim(&engine).unwrap(), 1);
    assert_eq!(stored(), 2, "committed before the id is handed out");
    assert_eq!(ids.claim(&engine).unwrap(), 2);
    assert_eq!(stored(), 3);
    refuse.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(ids.claim(&engine).is_err());
    refuse.store(false, std::sync::atomic::Ordering::SeqCst);
    assert_eq!(
        ids.claim(&engine).unwrap(),
        3,
        "a refused claim took nothing"
    );
    // Opened again (a restart), it goes on past every id handed out.
    let again = super::Ids::open(&engine, b"Nx").unwrap();
    assert_eq!(again.claim(&engine).unwrap(), 4);
}

/// A course whose first step is a quiz, due at once: a check that has
/// not heard of the course or its quiz (the course committed, `create`
/// not yet returned) finds both in the store and asks the first question.
#[tokio::test(start_paused = true)]
async fn a_quiz_committed_with_its_course_is_found_by_a_check_that_has_not_heard_of_it() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let b = open(Arc::clone(&engine), START_MS).await;
    three_nurses(&b);
    let surveys =
        Arc::new(super::Surveys::open(Arc::clone(&engine), Arc::clone(b.directory())).unwrap());
    let late = super::Courses::open(
        Arc::clone(&engine),
        Arc::clone(b.directory()),
        Arc::clone(&surveys),
    )
    .unwrap();
    let mut spec = course_spec();
    spec.steps.remove(0);
    spec.steps[0].delay_s = 0;
    let now = b.dispatcher().now_ms();
    let course = b.courses().create(spec, vec!["sms".into()], now).unwrap();
    let super::courses::Step::Quiz { survey: quiz, .. } = course.steps[0] else {
        panic!("the first step is the quiz");
    };
    assert!(surveys.get(quiz).is_none());
    let (_, due) = late.due(now).unwrap();
    assert_eq!(due.questions.len(), 3, "the quiz's first question to each");
    assert_eq!(surveys.get(quiz).map(|s| s.sessions), Some(3));
    b.shutdown().await;
}
