//! What the WIT 1.1 interfaces bring, through `mhero serve` and real HTTP
//! to gateways on loopback that answer as the providers document:
//!
//! - files: a campaign with an image goes through the `whatsapp-cloud`
//!   connector as Cloud API media messages (REST and FHIR
//!   `contentAttachment`); a worker not on WhatsApp, or one WhatsApp
//!   refuses, falls back to SMS, which carries no media: a dead letter
//!   saying so, per delivery;
//! - statuses asked for: RapidPro pushes no delivery reports; the broker
//!   asks its messages API about each broadcast and applies the answers.
//!
//! No WhatsApp or RapidPro runs here: the gateways are simulators built on
//! the providers' documented requests and answers (as the connectors'
//! fixtures are).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};

use super::server::{JsonBody, Server, get_json, json_of, make_token, wait_campaign, with};

/// What the simulated providers were asked.
#[derive(Default)]
struct Seen {
    /// WhatsApp: (authorization, body) of each message request.
    whatsapp: Vec<(String, Value)>,
    /// RapidPro: each broadcast's URNs, by id.
    broadcasts: Vec<Vec<String>>,
    /// RapidPro: (authorization, broadcast) of each status query.
    queries: Vec<(String, String)>,
}

type Shared = Arc<Mutex<Seen>>;

/// A number WhatsApp says it cannot deliver to (error 131026).
const NOT_ON_WHATSAPP: &str = "231770000013";
/// The RapidPro recipient whose message fails.
const FAILS_ON_RAPIDPRO: &str = "tel:+231770000104";
/// The RapidPro recipient still `wired` at the first query, `sent` after.
const SLOW_ON_RAPIDPRO: &str = "tel:+231770000105";

async fn graph_messages(
    State(seen): State<Shared>,
    Path((_version, _phone)): Path<(String, String)>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (AxumStatus, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let mut seen = seen.lock();
    seen.whatsapp.push((auth, body.clone()));
    if body["to"] == NOT_ON_WHATSAPP {
        return (
            AxumStatus::BAD_REQUEST,
            Json(json!({"error": {
                "message": "(#131026) Message undeliverable",
                "type": "OAuthException", "code": 131026,
                "error_data": {"messaging_product": "whatsapp", "details": "Message Undeliverable."},
                "fbtrace_id": "Az8or2yhqkZfEZ-_4Qn_Bam"}})),
        );
    }
    let n = seen.whatsapp.len();
    (
        AxumStatus::OK,
        Json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{"input": body["to"], "wa_id": body["to"]}],
            "messages": [{"id": format!("wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI{n}")}],
        })),
    )
}

async fn rapidpro_broadcast(
    State(seen): State<Shared>,
    Json(body): Json<Value>,
) -> (AxumStatus, Json<Value>) {
    let urns: Vec<String> = body["urns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u.as_str().unwrap().to_string())
        .collect();
    let mut seen = seen.lock();
    seen.broadcasts.push(urns.clone());
    let id = 76 + seen.broadcasts.len();
    (
        AxumStatus::CREATED,
        Json(json!({"id": id, "urns": urns, "contacts": [], "groups": [],
                    "text": body["text"], "status": "queued",
                    "created_on": "2026-11-28T10:00:00.000000Z"})),
    )
}

async fn rapidpro_messages(
    State(seen): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<std::collections::HashMap<String, String>>,
) -> (AxumStatus, Json<Value>) {
    let auth = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let broadcast = query.get("broadcast").cloned().unwrap_or_default();
    let mut seen = seen.lock();
    seen.queries.push((auth, broadcast.clone()));
    let asked = seen.queries.len();
    let Some(urns) = broadcast
        .parse::<usize>()
        .ok()
        .and_then(|id| seen.broadcasts.get(id.wrapping_sub(77)))
    else {
        return (AxumStatus::OK, Json(json!({"next": null, "results": []})));
    };
    let results: Vec<Value> = urns
        .iter()
        .map(|urn| {
            let status = match urn.as_str() {
                FAILS_ON_RAPIDPRO => "failed",
                SLOW_ON_RAPIDPRO if asked == 1 => "wired",
                SLOW_ON_RAPIDPRO => "sent",
                _ => "delivered",
            };
            json!({"id": 4_105_426, "broadcast": broadcast.parse::<u64>().unwrap(),
                   "urn": urn, "direction": "out", "type": "text", "status": status,
                   "text": "Report cases.", "attachments": [], "labels": []})
        })
        .collect();
    (
        AxumStatus::OK,
        Json(json!({"next": null, "previous": null, "results": results})),
    )
}

/// Both providers on one loopback port; returns its base URL.
fn start_providers(seen: Shared) -> String {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = Router::new()
                .route("/{version}/{phone}/messages", post(graph_messages))
                .route("/api/v2/broadcasts.json", post(rapidpro_broadcast))
                .route("/api/v2/messages.json", get(rapidpro_messages))
                .with_state(seen);
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    format!("http://{}", rx.recv().unwrap())
}

fn serve(seen: &Shared, dir: &std::path::Path) -> Server {
    let gateway = start_providers(Arc::clone(seen));
    let config = dir.join("mhero.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[channels.whatsapp]
connector = "whatsapp-cloud"
rate = 50

[channels.rapidpro]
connector = "rapidpro"
rate = 20
batch = 100
status_poll_s = 1

[channels.sms]
connector = "sandbox"

[plugins.config.whatsapp-cloud]
base_url = "{gateway}"
api_version = "v21.0"
phone_number_id = "106540352242922"
access_token = "EAAJB-test-token"
app_secret = "meta-app-secret-1"
verify_token = "moh-verify-token"

[plugins.config.rapidpro]
base_url = "{gateway}"
api_token = "rp-token-0123"
webhook_token = "flow-hook-1"
"#
        ),
    )
    .unwrap();
    Server::start_with(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn submit(client: &Client, server: &Server, token: &str, campaign: &Value) -> (StatusCode, Value) {
    json_of(
        with(client.post(server.url("/v1/campaigns")), token)
            .json_body(campaign)
            .send()
            .unwrap(),
    )
}

fn dead_reasons(client: &Client, server: &Server, token: &str) -> Vec<String> {
    let (status, dead) = get_json(client, server, token, "/v1/dead-letters?limit=100");
    assert_eq!(status, StatusCode::OK, "{dead}");
    dead.as_array()
        .unwrap()
        .iter()
        .map(|d| d["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

#[test]
fn files_go_where_the_channel_carries_them_and_fall_back_where_it_does_not() {
    let seen: Shared = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&seen, dir.path());
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let poster =
        json!({"url": "https://moh.example/posters/cold-chain.jpg", "content_type": "image/jpeg"});

    // Files no channel of the campaign can carry: refused at once.
    let (status, refused) = submit(
        &client,
        &server,
        &sender,
        &json!({
            "name": "Poster by SMS",
            "body": {"default": "Cold chain poster.", "attachments": [poster]},
            "channels": ["sms"],
            "audience": {"recipients": [{"phone": "+231770000010"}]},
        }),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("none of the channels sms carries media"),
        "{refused}"
    );

    // Three on WhatsApp; one not on it; one WhatsApp cannot reach.
    let (status, created) = submit(
        &client,
        &server,
        &sender,
        &json!({
            "name": "Cold chain poster",
            "body": {"default": "Check your fridge twice a day.", "attachments": [poster]},
            "channels": ["whatsapp", "sms"],
            "audience": {"recipients": [
                {"phone": "+231770000010"},
                {"phone": "+231770000011"},
                {"phone": "+231770000012"},
                {"phone": "+231770000014", "not_on": ["whatsapp"]},
                {"phone": format!("+{NOT_ON_WHATSAPP}")},
            ]},
        }),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let p = wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(60),
        |p| p["done"] == true,
    );
    assert_eq!(p["wired"].as_u64(), Some(3), "{p}");
    assert_eq!(p["dead"].as_u64(), Some(2), "{p}");
    let reasons = dead_reasons(&client, &server, &sender);
    assert_eq!(reasons.len(), 2, "{reasons:?}");
    for r in &reasons {
        assert!(
            r.contains("this channel cannot carry media (connector sandbox sends no files)"),
            "{r}"
        );
    }
    {
        let seen = seen.lock();
        // Four reached WhatsApp (one refused there); each an image by link
        // with its caption, with the channel's token.
        assert_eq!(seen.whatsapp.len(), 4);
        for (auth, body) in &seen.whatsapp {
            assert_eq!(auth, "Bearer EAAJB-test-token");
            assert_eq!(body["type"], "image", "{body}");
            assert_eq!(
                body["image"],
                json!({"link": "https://moh.example/posters/cold-chain.jpg",
                       "caption": "Check your fridge twice a day."})
            );
        }
    }

    // The same through FHIR: a contentAttachment, no text at all.
    let request = json!({
        "resourceType": "CommunicationRequest",
        "status": "active",
        "priority": "routine",
        "contained": [{"resourceType": "Practitioner", "id": "c1",
                       "telecom": [{"system": "phone", "value": "+231770000020"}]}],
        "recipient": [{"reference": "#c1"}],
        "medium": [{"coding": [{"code": "whatsapp"}]}],
        "payload": [{"contentAttachment": {"url": "https://moh.example/guidelines.pdf",
                                           "contentType": "application/pdf",
                                           "title": "measles-guidelines.pdf"}}]
    });
    let r = with(
        client.post(server.url("/fhir/r4/CommunicationRequest")),
        &sender,
    )
    .json_body(&request)
    .send()
    .unwrap();
    let (status, created) = json_of(r);
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        created["payload"][1]["contentAttachment"]["title"], "measles-guidelines.pdf",
        "{created}"
    );
    let id = created["id"].as_str().unwrap().to_string();
    wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(30),
        |p| p["wired"] == 1,
    );
    let seen = seen.lock();
    let (_, last) = seen.whatsapp.last().unwrap();
    assert_eq!(
        last,
        &json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "231770000020", "type": "document",
                "document": {"link": "https://moh.example/guidelines.pdf",
                             "filename": "measles-guidelines.pdf"}})
    );
}

#[test]
fn rapidpro_statuses_are_asked_for_and_applied() {
    let seen: Shared = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let server = serve(&seen, dir.path());
    let client = Client::new();
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let recipients: Vec<Value> = (101..=105)
        .map(|i| json!({"phone": format!("+231770000{i}")}))
        .collect();
    let (status, created) = submit(
        &client,
        &server,
        &sender,
        &json!({
            "name": "Through RapidPro",
            "body": {"default": "Report cases."},
            "channels": ["rapidpro"],
            "audience": {"recipients": recipients},
        }),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    // Handed over as broadcasts; RapidPro pushes nothing back: what moves
    // the statuses on is the broker asking, once a second here.
    let p = wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(30),
        |p| p["delivered"] == 3 && p["failed"] == 1 && p["sent"] == 1,
    );
    assert_eq!(p["wired"], 0, "{p}");
    {
        let seen = seen.lock();
        let sent: usize = seen.broadcasts.iter().map(Vec::len).sum();
        assert_eq!(sent, 5, "{:?}", seen.broadcasts);
        assert!(seen.queries.len() >= 2, "{:?}", seen.queries);
        for (auth, broadcast) in &seen.queries {
            assert_eq!(auth, "Token rp-token-0123");
            assert!(broadcast.parse::<usize>().unwrap() >= 77, "{broadcast}");
        }
    }
    // The one still `sent` is asked about each second, except while an
    // operator holds the channel: then the gateway hears nothing from it.
    let hold = |action: &str| {
        let url = server.url(&format!("/v1/channels/rapidpro/{action}"));
        let response = with(client.post(url), &admin).send().unwrap();
        assert!(response.status().is_success(), "{action}: {response:?}");
    };
    let asked = || seen.lock().queries.len();
    hold("pause");
    // A poll already under way when the hold came may still finish.
    std::thread::sleep(Duration::from_millis(1_500));
    let held_at = asked();
    std::thread::sleep(Duration::from_millis(3_500));
    assert_eq!(
        asked(),
        held_at,
        "status queries while the channel was held"
    );
    hold("resume");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while asked() == held_at {
        assert!(
            std::time::Instant::now() < deadline,
            "no status query after resume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}
