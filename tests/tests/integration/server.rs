//! `mhero serve`: the HTTP API over a real socket, with the real binary:
//! tokens and roles, campaigns from submission to delivery, clear errors,
//! the OpenAPI document, metrics, a clean stop on SIGTERM and a restart
//! that keeps everything.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use reqwest::blocking::{Client, RequestBuilder, Response};
use serde_json::{Value, json};

use super::mhero;

pub(crate) struct Server {
    child: Child,
    base: String,
    /// What it said it serves: `mhero: serving http://… and quic://… (certificate sha256:…) …`.
    pub(crate) banner: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(data: &Path) -> Server {
        Self::start_with(data, &[])
    }

    /// With more arguments before `serve` (`--config …`).
    pub(crate) fn start_with(data: &Path, args: &[&str]) -> Server {
        Self::start_on(data, args, "127.0.0.1:0")
    }

    /// Serving HTTP on `listen` (a peer that calls back must know where).
    pub(crate) fn start_on(data: &Path, args: &[&str], listen: &str) -> Server {
        let mut child = mhero()
            .arg("--data-dir")
            .arg(data)
            .args(args)
            .args(["serve", "--listen", listen, "--quic-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mhero serve");
        // Drained all along, or the server would block on a full pipe.
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = Arc::clone(&stderr);
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                lines.lock().push(line);
            }
        });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("mhero: serving ")
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("serve said {line:?}; stderr: {:?}", stderr.lock()))
            .to_string();
        Server {
            child,
            base,
            banner: line.trim().to_string(),
            stderr,
        }
    }

    /// The admin token the first start printed.
    pub(crate) fn first_admin_token(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(t) = self
                .stderr
                .lock()
                .iter()
                .map(|l| l.trim())
                .find(|l| l.starts_with("mhero_"))
            {
                return t.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no admin token in {:?}",
                self.stderr.lock()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then the exit status.
    pub(crate) fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(killed.success());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "still running after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub(crate) fn with(req: RequestBuilder, token: &str) -> RequestBuilder {
    req.bearer_auth(token)
}

pub(crate) trait JsonBody {
    fn json_body(self, value: &Value) -> Self;
}

impl JsonBody for RequestBuilder {
    fn json_body(self, value: &Value) -> Self {
        self.header("content-type", "application/json")
            .body(value.to_string())
    }
}

/// Workers' replies `(id, from, text)` as the sandbox gateway delivers
/// them to a channel's webhook, signed with its default secret.
pub(crate) fn sandbox_replies(
    client: &Client,
    server: &Server,
    channel: &str,
    replies: &[(&str, &str, &str)],
) {
    let inbound: Vec<Value> = replies
        .iter()
        .map(|(id, from, text)| serde_json::json!({"id": id, "from": from, "text": text}))
        .collect();
    let body = serde_json::json!({ "inbound": inbound }).to_string();
    let r = client
        .post(server.url(&format!("/webhooks/{channel}")))
        .header("content-type", "application/json")
        .header(
            "x-sandbox-signature",
            mhero_broker::signature::sign("sandbox-secret", body.as_bytes()),
        )
        .body(body)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
}

pub(crate) fn json_of(r: Response) -> (StatusCode, Value) {
    let status = r.status();
    let text = r.text().unwrap();
    let value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {status} {text}"));
    (status, value)
}

/// `GET path` with `token`: the status and the JSON body.
pub(crate) fn get_json(
    client: &Client,
    server: &Server,
    token: &str,
    path: &str,
) -> (StatusCode, Value) {
    json_of(with(client.get(server.url(path)), token).send().unwrap())
}

fn error_code(r: Response) -> (StatusCode, String) {
    let (status, body) = json_of(r);
    let code = body["error"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("no error code in {body}"))
        .to_string();
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    (status, code)
}

pub(crate) fn make_token(
    client: &Client,
    server: &Server,
    admin: &str,
    role: &str,
) -> (String, String) {
    let (status, body) = json_of(
        with(client.post(server.url("/v1/tokens")), admin)
            .json_body(&json!({"role": role, "name": format!("test {role}")}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["role"], role);
    (
        body["token"].as_str().unwrap().to_string(),
        body["id"].as_str().unwrap().to_string(),
    )
}

fn wait_done(client: &Client, server: &Server, token: &str, id: &str) -> Value {
    wait_campaign(client, server, token, id, Duration::from_secs(60), |c| {
        c["done"] == true
    })
}

/// Polls `GET /v1/campaigns/{id}` until `until` holds of it (or fails
/// after `within`, showing it); returns it.
pub(crate) fn wait_campaign(
    client: &Client,
    server: &Server,
    token: &str,
    id: &str,
    within: Duration,
    until: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get_json(client, server, token, &format!("/v1/campaigns/{id}"));
        assert_eq!(status, StatusCode::OK, "{body}");
        if until(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "still waiting: {body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `promtool check metrics` (Debian's prometheus package) finds nothing
/// to say about the exposition: a peer check.
fn promtool_accepts(metrics: &str) {
    let promtool = mhero_tests::program("promtool");
    if !mhero_tests::peer_present(
        promtool
            .is_none()
            .then(|| "promtool is not installed (run `scripts/setup.sh --peers`)".to_string()),
    ) {
        return;
    }
    let mut child = std::process::Command::new(promtool.unwrap())
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), metrics.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn serve_takes_campaigns_over_http_with_tokens_roles_and_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let client = Client::new();
    let server = Server::start(&data);
    let admin = server.first_admin_token();

    // Health checks need no token; everything else does.
    let (status, body) = json_of(client.get(server.url("/healthz")).send().unwrap());
    assert_eq!(
        (status, body["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    assert_eq!(
        client.get(server.url("/readyz")).send().unwrap().status(),
        StatusCode::OK
    );
    // HTTP/2 with prior knowledge (h2c) is served too, for integrators
    // that push many requests over one connection.
    let h2c = Client::builder().http2_prior_knowledge().build().unwrap();
    let r = h2c.get(server.url("/healthz")).send().unwrap();
    assert_eq!(
        (r.status(), r.version()),
        (StatusCode::OK, reqwest::Version::HTTP_2)
    );
    let r = client.get(server.url("/v1/campaigns")).send().unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        error_code(r),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );
    let r = with(client.get(server.url("/v1/campaigns")), "mhero_not-a-token")
        .send()
        .unwrap();
    assert_eq!(
        error_code(r),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    let (viewer, viewer_id) = make_token(&client, &server, &admin, "viewer");
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    // A sender may not manage tokens; a viewer may not send.
    let r = with(client.post(server.url("/v1/tokens")), &sender)
        .json_body(&json!({"role": "admin", "name": "escalate"}))
        .send()
        .unwrap();
    assert_eq!(error_code(r), (StatusCode::FORBIDDEN, "forbidden".into()));
    let campaign = json!({
        "name": "Cholera alert, Bong",
        "lane": "emergency",
        "body": {"default": "Report suspected cholera cases today.", "variants": {"fr": "Signalez les cas suspects aujourd'hui."}},
        "channels": ["sandbox"],
        "audience": {"recipients": [
            {"phone": "+231770000001"},
            {"phone": "0770000002", "language": "fr"},
            {"phone": "not a number"}
        ]}
    });
    let r = with(client.post(server.url("/v1/campaigns")), &viewer)
        .json_body(&campaign)
        .send()
        .unwrap();
    assert_eq!(error_code(r), (StatusCode::FORBIDDEN, "forbidden".into()));

    // Bad input: a clear error with a code, nothing accepted.
    let post = |body: String| {
        with(client.post(server.url("/v1/campaigns")), &sender)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap()
    };
    let (status, code) = error_code(post("{\"name\": ".into()));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_json")
    );
    let mut unknown = campaign.clone();
    unknown["priority"] = json!("stat");
    let (status, body) = json_of(post(unknown.to_string()));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("priority"),
        "{body}"
    );
    let mut nobody = campaign.clone();
    nobody["audience"] = json!({"recipients": [{"phone": "12"}]});
    let (status, body) = json_of(post(nobody.to_string()));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("audience"),
        "{body}"
    );
    let mut no_channel = campaign.clone();
    no_channel["channels"] = json!(["telegram"]);
    let (status, code) = error_code(post(no_channel.to_string()));
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid")
    );
    // Over api.max_body_kb (4 MiB by default).
    // The answer closes the connection (the rest of the body is unread);
    // the client's next request opens another.
    let big = post(format!("\"{}\"", "x".repeat(5 << 20)));
    assert_eq!(big.headers()["connection"], "close");
    let (status, code) = error_code(big);
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    let (status, body) = get_json(&client, &server, &viewer, "/v1/campaigns");
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!([])),
        "nothing was accepted"
    );

    // A campaign from submission to delivery.
    let r = post(campaign.to_string());
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (_, created) = json_of(r);
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/campaigns/{id}"));
    assert_eq!(created["accepted"], 2);
    assert_eq!(created["rejected"][0]["index"], 2, "{created}");
    let done = wait_done(&client, &server, &viewer, &id);
    assert_eq!(done["total"], 2, "{done}");
    assert_eq!(done["lane"], "emergency");
    assert_eq!(done["eta_s"], 0.0);
    assert_eq!(
        done["delivered"].as_u64().unwrap()
            + done["sent"].as_u64().unwrap()
            + done["wired"].as_u64().unwrap(),
        2,
        "{done}"
    );

    // A scheduled campaign, cancelled before it starts: nothing is sent.
    let mut later = campaign.clone();
    later["lane"] = json!("bulk");
    later["start_at_ms"] = json!(4_102_444_800_000u64);
    let (status, scheduled) = json_of(post(later.to_string()));
    assert_eq!(status, StatusCode::CREATED, "{scheduled}");
    let later_id = scheduled["id"].as_str().unwrap().to_string();
    let (status, body) = get_json(
        &client,
        &server,
        &viewer,
        &format!("/v1/campaigns/{later_id}"),
    );
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("scheduled"))
    );
    assert_eq!(body["eta_s"], Value::Null, "nothing has ended yet: {body}");
    let (status, body) = json_of(
        with(
            client.post(server.url(&format!("/v1/campaigns/{later_id}/cancel"))),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::OK, Some("cancelled")),
        "{body}"
    );
    let cancelled = wait_done(&client, &server, &viewer, &later_id);
    assert_eq!(cancelled["cancelled"], 2, "{cancelled}");
    let r = with(client.get(server.url("/v1/campaigns/c999999")), &viewer)
        .send()
        .unwrap();
    assert_eq!(error_code(r), (StatusCode::NOT_FOUND, "not_found".into()));

    // Newest first.
    let (_, list) = get_json(&client, &server, &viewer, "/v1/campaigns?limit=10");
    let ids: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [later_id.as_str(), id.as_str()]);

    // The directory is empty here: a selector reaches nobody, and says
    // which of its terms matched nothing; an unreadable one is refused.
    let (status, count) = json_of(
        with(client.post(server.url("/v1/audience/count")), &viewer)
            .json_body(&json!({"selector": "role:nurse", "channels": ["sandbox"]}))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{count}");
    assert_eq!(count["selected"], 0);
    assert_eq!(count["unknown_terms"], json!(["role:nurse"]));
    let r = with(client.post(server.url("/v1/audience/count")), &viewer)
        .json_body(&json!({"selector": "role:nurse AND ("}))
        .send()
        .unwrap();
    assert_eq!(error_code(r), (StatusCode::BAD_REQUEST, "invalid".into()));

    // Channels, plugins, dead letters, metrics, the OpenAPI document.
    let (_, channels) = get_json(&client, &server, &viewer, "/v1/channels");
    assert_eq!(channels[0]["name"], "sandbox", "{channels}");
    let (_, plugins) = get_json(&client, &server, &viewer, "/v1/plugins");
    assert!(
        plugins
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "keywords" && p["kind"] == "classifier"),
        "{plugins}"
    );
    let (status, dead) = get_json(&client, &server, &viewer, "/v1/dead-letters");
    assert_eq!((status, dead), (StatusCode::OK, json!([])));
    let r = with(
        client.get(server.url("/v1/dead-letters?newest=true&after=c1-0")),
        &viewer,
    )
    .send()
    .unwrap();
    assert_eq!(error_code(r), (StatusCode::BAD_REQUEST, "invalid".into()));
    let r = with(client.post(server.url("/v1/dead-letters/replay")), &admin)
        .json_body(&json!({}))
        .send()
        .unwrap();
    assert_eq!(error_code(r), (StatusCode::BAD_REQUEST, "invalid".into()));
    let metrics = with(client.get(server.url("/metrics")), &viewer)
        .send()
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    assert_eq!(
        metrics.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let metrics = metrics.text().unwrap();
    assert!(metrics.contains("mhero_dispatch_"), "{metrics}");
    promtool_accepts(&metrics);
    let openmetrics = with(client.get(server.url("/metrics")), &viewer)
        .header("accept", "application/openmetrics-text; version=1.0.0")
        .send()
        .unwrap()
        .text()
        .unwrap();
    assert!(openmetrics.ends_with("# EOF\n"), "{openmetrics}");
    let (status, doc) = get_json(&client, &server, &viewer, "/openapi.json");
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/v1/campaigns"]["post"].is_object());

    // Webhooks need no token: the connector checks them. An unknown
    // channel is a clear 404.
    let (status, code) = error_code(
        client
            .post(server.url("/webhooks/telegram"))
            .body("{}")
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "unknown_channel")
    );
    let r = client.get(server.url("/v2/anything")).send().unwrap();
    assert_eq!(error_code(r), (StatusCode::NOT_FOUND, "not_found".into()));

    // A revoked token stops working at once.
    let r = with(
        client.delete(server.url(&format!("/v1/tokens/{viewer_id}"))),
        &admin,
    )
    .send()
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let r = with(client.get(server.url("/v1/campaigns")), &viewer)
        .send()
        .unwrap();
    assert_eq!(
        error_code(r),
        (StatusCode::UNAUTHORIZED, "unauthorized".into())
    );

    // Tokens cannot be made in the store while the broker holds it.
    let out = mhero()
        .arg("--data-dir")
        .arg(&data)
        .args(["token", "create", "--role", "viewer"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use by a running broker"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM: a clean stop.
    let stderr = Arc::clone(&server.stderr);
    let status = server.stop();
    assert!(status.success(), "{status}: {:?}", stderr.lock());
    assert!(
        stderr
            .lock()
            .iter()
            .any(|l| l.contains("the store is closed")),
        "{:?}",
        stderr.lock()
    );

    // Stopped, the CLI makes a token; restarted, the broker keeps its
    // campaigns and tokens and prints no new admin token.
    let out = mhero()
        .arg("--data-dir")
        .arg(&data)
        .args(["token", "create", "--role", "viewer", "--name", "dashboard"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let offline = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let server = Server::start(&data);
    let (status, list) = get_json(&client, &server, &offline, "/v1/campaigns");
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 2, "{list}");
    // Kept: every delivery still ended; receipts that came in after the
    // campaign ended only moved some from sent to delivered.
    assert_eq!(list[1]["total"], done["total"], "{list}");
    assert_eq!(list[1]["ended"], done["ended"], "{list}");
    assert!(
        list[1]["delivered"].as_u64() >= done["delivered"].as_u64(),
        "{list} {done}"
    );
    let (status, _) = get_json(&client, &server, &admin, "/v1/tokens");
    assert_eq!(status, StatusCode::OK);
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !server
            .stderr
            .lock()
            .iter()
            .any(|l| l.trim().starts_with("mhero_")),
        "a second admin token was made"
    );
    assert!(server.stop().success());
}

fn fhir_of(r: Response) -> (StatusCode, Value) {
    assert_eq!(
        r.headers()["content-type"],
        "application/fhir+json",
        "FHIR answers are application/fhir+json"
    );
    json_of(r)
}

/// The `OperationOutcome` of a refused FHIR request: its issue code and
/// diagnostics.
fn outcome_of(r: Response) -> (StatusCode, String, String) {
    let (status, body) = fhir_of(r);
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");
    let issue = &body["issue"][0];
    assert_eq!(issue["severity"], "error");
    (
        status,
        issue["code"].as_str().unwrap().to_string(),
        issue["diagnostics"].as_str().unwrap().to_string(),
    )
}

fn progress_count(request: &Value, name: &str) -> u64 {
    request["extension"][0]["extension"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["url"] == name)
        .and_then(|e| e["valueUnsignedInt"].as_u64())
        .unwrap_or_else(|| panic!("no {name} in {request}"))
}

#[test]
fn the_fhir_facade_imports_workers_and_sends_communication_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");

    // Refusals are OperationOutcomes too.
    let (status, code, _) = outcome_of(client.get(server.url("/fhir/r4/metadata")).send().unwrap());
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::UNAUTHORIZED, "security")
    );
    let (status, caps) = fhir_of(
        with(client.get(server.url("/fhir/r4/metadata")), &sender)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(caps["resourceType"], "CapabilityStatement");
    assert_eq!(caps["fhirVersion"], "4.0.1");

    // Workers in through a transaction Bundle; the entry the mapper
    // cannot read is answered 422, the others are imported.
    let bundle = json!({
        "resourceType": "Bundle", "type": "transaction",
        "entry": [
            {"resource": {"resourceType": "Practitioner", "id": "P-1", "name": [{"text": "Musu Kollie"}],
                          "telecom": [{"system": "phone", "value": "+231770000101"}]},
             "request": {"method": "PUT", "url": "Practitioner/P-1"}},
            {"resource": {"resourceType": "Practitioner", "id": "P-2", "name": [{"text": "Jallah Flomo"}],
                          "telecom": [{"system": "phone", "value": "0770000102"}],
                          "communication": [{"coding": [{"code": "fr"}]}]},
             "request": {"method": "PUT", "url": "Practitioner/P-2"}},
            {"resource": {"resourceType": "Practitioner", "id": "P-3", "telecom": {"system": "phone", "value": "0770"}},
             "request": {"method": "PUT", "url": "Practitioner/P-3"}}
        ]
    });
    let (status, response) = fhir_of(
        with(client.post(server.url("/fhir/r4")), &sender)
            .json_body(&bundle)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{response}");
    assert_eq!(response["type"], "transaction-response");
    let statuses: Vec<&str> = response["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["response"]["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["200 OK", "200 OK", "422 Unprocessable Entity"],
        "{response}"
    );

    // A Mobile Report Alert to a worker in the directory and one given
    // inline (a contained Practitioner), with a French variant.
    let alert = json!({
        "resourceType": "CommunicationRequest",
        "status": "active",
        "priority": "stat",
        "identifier": [{"value": "cholera-bong-1"}],
        "contained": [{"resourceType": "Practitioner", "id": "c1",
                       "telecom": [{"system": "phone", "value": "+231770000199"}]}],
        "recipient": [{"reference": "Practitioner/P-1"}, {"reference": "#c1"}],
        "medium": [{"coding": [{"code": "sandbox"}]}],
        "payload": [
            {"contentString": "Report suspected cholera cases today."},
            {"contentString": "Signalez les cas suspects aujourd'hui.",
             "extension": [{"url": "https://mhero.org/fhir/StructureDefinition/payload-language", "valueCode": "fr"}]}
        ]
    });
    let post_alert = || {
        with(
            client.post(server.url("/fhir/r4/CommunicationRequest")),
            &sender,
        )
        .header("idempotency-key", "moh-cholera-bong-1")
        .json_body(&alert)
        .send()
        .unwrap()
    };
    let r = post_alert();
    assert_eq!(r.status(), StatusCode::CREATED);
    let location = r.headers()["location"].to_str().unwrap().to_string();
    let (_, created) = fhir_of(r);
    assert_eq!(created["resourceType"], "CommunicationRequest");
    assert_eq!(created["priority"], "stat");
    assert_eq!(
        created["payload"][1]["contentString"],
        "Signalez les cas suspects aujourd'hui."
    );
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/fhir/r4/CommunicationRequest/{id}"));
    assert_eq!(progress_count(&created, "total"), 2);
    // The integrator's retry after a timeout (same Idempotency-Key): the
    // CommunicationRequest the first made, 200, nothing sent again.
    let (status, retried) = fhir_of(post_alert());
    assert_eq!(status, StatusCode::OK, "{retried}");
    assert_eq!(retried["id"], created["id"], "{retried}");

    // The same over REST; the key with another campaign is refused.
    let keyed = |body: &Value| {
        with(client.post(server.url("/v1/campaigns")), &sender)
            .header("idempotency-key", "lab-42")
            .json_body(body)
            .send()
            .unwrap()
    };
    let lab = json!({
        "name": "Lab result 42",
        "lane": "high",
        "body": {"default": "Sample 42: results are ready at the lab."},
        "channels": ["sandbox"],
        "audience": {"recipients": [{"phone": "+231770000301"}, {"phone": "12"}]}
    });
    let (status, first) = json_of(keyed(&lab));
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["replayed"], false, "{first}");
    let (status, again) = json_of(keyed(&lab));
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (
            &again["id"],
            &again["accepted"],
            &again["rejected"],
            &again["replayed"]
        ),
        (&first["id"], &json!(1), &first["rejected"], &json!(true)),
        "{again}"
    );
    let mut other = lab.clone();
    other["name"] = json!("Lab result 43");
    let (status, body) = json_of(keyed(&other));
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid")),
        "{body}"
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Idempotency-Key"),
        "{body}"
    );
    // The same campaign through the REST view: the emergency lane.
    let (_, campaign) = get_json(&client, &server, &sender, &format!("/v1/campaigns/{id}"));
    assert_eq!(campaign["lane"], "emergency");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let (status, read) = fhir_of(
            with(client.get(server.url(&location)), &sender)
                .send()
                .unwrap(),
        );
        assert_eq!(status, StatusCode::OK);
        if read["status"] == "completed" {
            break read;
        }
        assert_eq!(read["status"], "active");
        assert!(Instant::now() < deadline, "{read}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        progress_count(&done, "sent") + progress_count(&done, "delivered"),
        2,
        "{done}"
    );

    // One Communication per delivery, paged: who it went to, its status,
    // when it left the queue and, once delivered, when it arrived.
    let search = |query: &str| {
        fhir_of(
            with(
                client.get(server.url(&format!("/fhir/r4/Communication?{query}"))),
                &sender,
            )
            .send()
            .unwrap(),
        )
    };
    let (status, first) = search(&format!("based-on=CommunicationRequest/{id}&_count=1"));
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["type"], "searchset");
    assert_eq!(first["total"], 2);
    let entries = first["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 1, "{first}");
    let next = first["link"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["relation"] == "next")
        .and_then(|l| l["url"].as_str())
        .expect("a next link while more remain");
    let next = &next[next.find("/fhir/r4/").unwrap()..];
    let (_, second) = fhir_of(with(client.get(server.url(next)), &sender).send().unwrap());
    assert_eq!(second["entry"].as_array().unwrap().len(), 1, "{second}");
    assert!(
        !second["link"]
            .as_array()
            .unwrap()
            .iter()
            .any(|l| l["relation"] == "next"),
        "the last page has no next link: {second}"
    );
    let mut recipients = Vec::new();
    for page in [&first, &second] {
        let c = &page["entry"][0]["resource"];
        assert_eq!(c["resourceType"], "Communication");
        assert_eq!(
            c["basedOn"][0]["reference"],
            format!("CommunicationRequest/{id}")
        );
        assert_eq!(c["medium"][0]["coding"][0]["code"], "sandbox");
        assert!(
            c["status"] == "in-progress" || c["status"] == "completed",
            "{c}"
        );
        let sent = c["sent"]
            .as_str()
            .expect("handed to the gateway: a sent time");
        assert!(sent.ends_with('Z'), "{sent}");
        if c["status"] == "completed" {
            assert!(c["received"].as_str().unwrap() >= sent, "{c}");
        }
        recipients.push(
            c["recipient"][0]["identifier"]["value"]
                .as_str()
                .unwrap()
                .to_string(),
        );
        // Read on its own too.
        let one = c["id"].as_str().unwrap();
        let (status, read) = fhir_of(
            with(
                client.get(server.url(&format!("/fhir/r4/Communication/{one}"))),
                &sender,
            )
            .send()
            .unwrap(),
        );
        assert_eq!(status, StatusCode::OK);
        assert_eq!(read["id"], c["id"]);
    }
    recipients.sort();
    assert_eq!(recipients, ["tel:+231770000101", "tel:+231770000199"]);
    let (status, code, why) = outcome_of(
        with(client.get(server.url("/fhir/r4/Communication")), &sender)
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid")
    );
    assert!(why.contains("based-on"), "{why}");
    let (status, _) = search("based-on=CommunicationRequest/c4040");
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The same through REST.
    let (status, page) = get_json(
        &client,
        &server,
        &sender,
        &format!("/v1/campaigns/{id}/deliveries?limit=10"),
    );
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 2);
    assert_eq!(page["next"], Value::Null);
    let to: Vec<&str> = page["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["to"].as_str().unwrap())
        .collect();
    assert_eq!(to.len(), 2);
    assert!(
        to.contains(&"+231770000101") && to.contains(&"+231770000199"),
        "{page}"
    );
    let (status, code) = error_code(
        with(
            client.get(server.url(&format!("/v1/campaigns/{id}/deliveries?limit=many"))),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid_query")
    );

    // A selector instead of recipients, scheduled: read back as sent.
    let later = json!({
        "resourceType": "CommunicationRequest",
        "status": "active",
        "priority": "routine",
        "extension": [{"url": "https://mhero.org/fhir/StructureDefinition/audience-selector", "valueString": "*"}],
        "occurrenceDateTime": "2099-01-01T08:00:00+00:00",
        "payload": [{"contentString": "Stock report due Friday."}]
    });
    let (status, scheduled) = fhir_of(
        with(
            client.post(server.url("/fhir/r4/CommunicationRequest")),
            &sender,
        )
        .json_body(&later)
        .send()
        .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{scheduled}");
    assert_eq!(scheduled["status"], "active");
    assert_eq!(scheduled["occurrenceDateTime"], "2099-01-01T08:00:00.000Z");
    assert_eq!(
        progress_count(&scheduled, "total"),
        2,
        "P-1 and P-2: {scheduled}"
    );
    assert_eq!(progress_count(&scheduled, "queued"), 0, "{scheduled}");

    // Bad requests: each an OperationOutcome naming what is wrong, and
    // nothing accepted.
    let refused = |body: String| {
        outcome_of(
            with(
                client.post(server.url("/fhir/r4/CommunicationRequest")),
                &sender,
            )
            .header("content-type", "application/fhir+json")
            .body(body)
            .send()
            .unwrap(),
        )
    };
    let mut unknown = alert.clone();
    unknown["recipient"] = json!([{"reference": "Practitioner/P-404"}]);
    let (status, code, why) = refused(unknown.to_string());
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::BAD_REQUEST, "invalid")
    );
    assert!(why.contains("Practitioner/P-404"), "{why}");
    let mut priority = alert.clone();
    priority["priority"] = json!("whenever");
    assert!(refused(priority.to_string()).2.contains("priority"));
    let mut date_only = later.clone();
    date_only["occurrenceDateTime"] = json!("2099-01-01");
    assert!(
        refused(date_only.to_string())
            .2
            .contains("occurrenceDateTime")
    );
    let mut draft = alert.clone();
    draft["status"] = json!("draft");
    assert!(refused(draft.to_string()).2.contains("status"));
    assert!(
        refused(json!({"resourceType": "Patient"}).to_string())
            .2
            .contains("Patient")
    );
    let (status, _, _) = refused("{not json".into());
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, code, _) = outcome_of(
        with(
            client.get(server.url("/fhir/r4/CommunicationRequest/c4040")),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not-found")
    );
    let (_, list) = get_json(&client, &server, &sender, "/v1/campaigns");
    assert_eq!(
        list.as_array().unwrap().len(),
        3,
        "only the two accepted and the keyed lab result, each once: {list}"
    );
    // The directory over REST: what the Bundle brought in, and consent.
    let get = |path: &str, token: &str| get_json(&client, &server, token, path);
    let (status, summary) = get("/v1/directory", &sender);
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(summary["contacts"], 2, "{summary}");
    let (_, page) = get("/v1/contacts?limit=1", &sender);
    assert_eq!(page["total"], 2, "{page}");
    assert_eq!(page["contacts"].as_array().unwrap().len(), 1);
    let after = page["next_after"].as_u64().expect("a next page");
    let (_, rest) = get(&format!("/v1/contacts?limit=1&after={after}"), &sender);
    assert_eq!(rest["contacts"].as_array().unwrap().len(), 1, "{rest}");
    assert_eq!(rest["next_after"], Value::Null, "{rest}");
    let (status, musu) = get("/v1/contacts/%2B231770000101", &sender);
    assert_eq!(status, StatusCode::OK, "{musu}");
    assert_eq!(musu["name"], "Musu Kollie");
    let (_, jallah) = get("/v1/contacts/Practitioner%2FP-2", &sender);
    assert_eq!(jallah["phone"], "+231770000102", "normalised: {jallah}");
    assert_eq!(jallah["language"], "fr");
    let (status, code) = error_code(
        with(
            client.get(server.url("/v1/contacts/Practitioner%2FP-404")),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );
    let (status, code) = error_code(
        with(
            client.get(server.url("/v1/contacts?selector=role%3A%28")),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{code}");
    // Opted out: no longer selected; only an admin opts back in.
    let (status, out) = json_of(
        with(
            client.post(server.url("/v1/contacts/Practitioner%2FP-1/opt-out")),
            &sender,
        )
        .json_body(&json!({"via": "STOP by sms"}))
        .send()
        .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{out}");
    assert_eq!(out["opted_out"]["via"], "STOP by sms");
    assert_eq!(get("/v1/contacts", &sender).1["total"], 1);
    let (status, code) = error_code(
        with(
            client.post(server.url("/v1/contacts/Practitioner%2FP-1/opt-in")),
            &sender,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, back) = json_of(
        with(
            client.post(server.url("/v1/contacts/Practitioner%2FP-1/opt-in")),
            &admin,
        )
        .send()
        .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{back}");
    assert_eq!(back["opted_out"], Value::Null);
    assert_eq!(get("/v1/contacts", &sender).1["total"], 2);
    let (status, groups) = get("/v1/groups", &sender);
    assert_eq!(status, StatusCode::OK);
    assert!(groups.is_array(), "{groups}");
    assert!(server.stop().success());
}

fn channel(client: &Client, server: &Server, token: &str, name: &str) -> Value {
    let (status, all) = get_json(client, server, token, "/v1/channels");
    assert_eq!(status, StatusCode::OK, "{all}");
    all.as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no channel {name} in {all}"))
}

fn ended(campaign: &Value) -> u64 {
    campaign["ended"].as_u64().unwrap()
}

#[test]
fn a_paused_channel_sends_nothing_until_resumed_even_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("mhero.toml");
    std::fs::write(
        &config,
        "[channels.sms]\nconnector = \"sandbox\"\nrate = 20\nburst = 1\n",
    )
    .unwrap();
    let args = ["--config", config.to_str().unwrap()];
    let client = Client::new();
    let server = Server::start_with(&data, &args);
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    assert_eq!(channel(&client, &server, &admin, "sms")["state"], "active");

    // Only an admin pauses; an unknown channel is a 404.
    let (status, code) = error_code(
        with(client.post(server.url("/v1/channels/sms/pause")), &sender)
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::FORBIDDEN, "forbidden")
    );
    let (status, code) = error_code(
        with(client.post(server.url("/v1/channels/telex/pause")), &admin)
            .send()
            .unwrap(),
    );
    assert_eq!(
        (status, code.as_str()),
        (StatusCode::NOT_FOUND, "not_found")
    );

    // 200 recipients at 20/s: ten seconds of sending, paused early on.
    let recipients: Vec<Value> = (0..200)
        .map(|i| json!({"phone": format!("+2317700{i:05}")}))
        .collect();
    let (status, created) = json_of(
        with(client.post(server.url("/v1/campaigns")), &sender)
            .json_body(&json!({
                "name": "stock reminder",
                "body": {"default": "Stock report due Friday."},
                "channels": ["sms"],
                "audience": {"recipients": recipients},
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    let campaign =
        |server: &Server| get_json(&client, server, &sender, &format!("/v1/campaigns/{id}")).1;
    let deadline = Instant::now() + Duration::from_secs(30);
    while ended(&campaign(&server)) < 5 {
        assert!(Instant::now() < deadline, "{}", campaign(&server));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, held) = json_of(
        with(client.post(server.url("/v1/channels/sms/pause")), &admin)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{held}");
    assert_eq!(held["state"], "held");
    // What was on the wire settles; then nothing more goes out.
    std::thread::sleep(Duration::from_millis(500));
    let at_pause = ended(&campaign(&server));
    std::thread::sleep(Duration::from_millis(1500));
    let later = campaign(&server);
    assert_eq!(ended(&later), at_pause, "sent while paused: {later}");
    assert!(at_pause < 200, "{later}");
    let ch = channel(&client, &server, &sender, "sms");
    assert_eq!(ch["state"], "held", "{ch}");
    assert_eq!(ch["sent_last_second"], 0, "{ch}");
    let waiting: u64 = ch["lanes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["ready"].as_u64().unwrap() + l["leased"].as_u64().unwrap())
        .sum();
    assert!(waiting > 0, "the rest waits in the queue: {ch}");

    // Still held after a restart.
    assert!(server.stop().success());
    let server = Server::start_with(&data, &args);
    assert_eq!(channel(&client, &server, &admin, "sms")["state"], "held");
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(ended(&campaign(&server)), at_pause);

    // Resumed: the campaign completes, every recipient once.
    let (status, resumed) = json_of(
        with(client.post(server.url("/v1/channels/sms/resume")), &admin)
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::OK, "{resumed}");
    assert_eq!(resumed["state"], "active");
    let done = wait_done(&client, &server, &sender, &id);
    assert_eq!(done["total"], 200, "{done}");
    assert_eq!(ended(&done), 200, "{done}");
    assert!(server.stop().success());
}

#[test]
fn mhero_send_and_status_talk_to_a_running_server() {
    let tmp = tempfile::tempdir().unwrap();
    let client = Client::new();
    let server = Server::start(&tmp.path().join("data"));
    let admin = server.first_admin_token();
    let (sender, _) = make_token(&client, &server, &admin, "sender");
    let remote = |args: &[&str], token: Option<&str>| {
        let mut command = mhero();
        command.args(args).args(["--server", &server.base]);
        command.env_remove("MHERO_TOKEN");
        if let Some(t) = token {
            command.env("MHERO_TOKEN", t);
        }
        command.output().unwrap()
    };

    let out = remote(
        &[
            "send",
            "--text",
            "Measles campaign starts Monday.",
            "--to",
            "+231770000001",
            "--to",
            "0770000002",
            "--to",
            "12",
            "--lane",
            "high",
            "--wait",
        ],
        Some(&sender),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout} {stderr}");
    let id = stdout.split(':').next().unwrap().trim().to_string();
    assert!(
        stdout.contains("accepted 2 recipients on sandbox"),
        "{stdout}"
    );
    assert!(
        stderr.contains("refused --to #2"),
        "the short number: {stderr}"
    );
    assert!(stdout.contains("2 recipients, 2 ended"), "waited: {stdout}");

    let out = remote(&["status", &id, "--json"], Some(&sender));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(c["id"], id.as_str());
    assert_eq!(c["lane"], "high");
    assert_eq!(c["done"], true, "{c}");

    // One clear line when something is wrong, and a failing exit.
    let out = remote(&["status", &id], None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("MHERO_TOKEN"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = remote(&["status", "c999"], Some(&sender));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("404") && err.contains("c999"), "{err}");
    // A file for channels that carry none: the server's reason, in one line.
    let out = remote(
        &[
            "send",
            "--text",
            "Cold chain poster.",
            "--attach",
            "https://moh.example/poster.jpg",
            "--to",
            "+231770000001",
        ],
        Some(&sender),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("400") && err.contains("none of the channels sandbox carries media"),
        "{err}"
    );
    let out = remote(
        &["send", "--text", "x", "--to", "+231770000001"],
        Some("mhero_wrong"),
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("401"));
    assert!(server.stop().success());
}
