//! A gateway that misbehaves, on loopback: `mhero serve` sends a campaign
//! through the `sandbox` connector's HTTP protocol to a gateway (raw
//! HTTP/1.1 over tokio, so it can reset connections and trickle bodies)
//! that answers each message's first attempt with a fault by the message's
//! number — 503, 429 with Retry-After, a connection reset, no answer past
//! the channel's request timeout, a slow body, malformed JSON — and every
//! request for a while with 503 (a burst). Every delivery must end
//! delivered or dead-lettered with its reason, none twice at the gateway,
//! and the channel's rate must hold through the retries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::StatusCode;
use reqwest::blocking::Client;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::server::{JsonBody, Server, get_json, json_of, make_token, wait_campaign, with};

const MESSAGES: u32 = 600;
const RATE: u32 = 200;
const BURST: u32 = 10;
const REQUEST_TIMEOUT_MS: u64 = 800;
const SECRET: &str = "faulty-gateway-webhook-secret";
/// Requests (by arrival order) answered 503 whatever they carry.
const BURST_503: std::ops::Range<u64> = 300..360;

/// What a message's first attempt meets, by its number in the campaign.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    ServerError,
    Throttled,
    Reset,
    NoAnswer,
    SlowBody,
    Malformed,
    None,
}

fn fault(index: u64) -> Fault {
    if index % 100 == 1 {
        // Each pauses the whole channel for a second: a few are enough.
        return Fault::Throttled;
    }
    match index % 8 {
        0 => Fault::ServerError,
        2 => Fault::Reset,
        3 => Fault::NoAnswer,
        4 => Fault::SlowBody,
        5 => Fault::Malformed,
        _ => Fault::None,
    }
}

#[derive(Default)]
struct Gateway {
    /// Arrival time (ms since start) of every request.
    arrivals: Vec<u64>,
    /// Attempts per delivery id.
    attempts: HashMap<String, u32>,
    /// Messages taken (answered 202 with an id): delivery id → gateway id.
    taken: HashMap<String, String>,
    /// Times a message was taken again.
    duplicates: u32,
}

/// One HTTP/1.1 request: path and body (Content-Length framing).
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            let length: usize = head
                .lines()
                .find_map(|l| {
                    let (name, value) = l.split_once(':')?;
                    name.eq_ignore_ascii_case("content-length")
                        .then(|| value.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + length {
                let mut chunk = [0u8; 8192];
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            let path = head.split_whitespace().nth(1)?.to_string();
            return Some((path, body));
        }
        let mut chunk = [0u8; 8192];
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn response(status: &str, headers: &[(&str, &str)], body: &str) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\n", body.len());
    for (n, v) in headers {
        out.push_str(&format!("{n}: {v}\r\n"));
    }
    out.push_str("\r\n");
    out.push_str(body);
    out.into_bytes()
}

async fn serve_connection(mut stream: TcpStream, state: Arc<Mutex<Gateway>>, started: Instant) {
    let mut buf = Vec::new();
    while let Some((path, body)) = read_request(&mut stream, &mut buf).await {
        let message: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let id = message["id"].as_str().unwrap_or_default().to_string();
        let index: u64 = id
            .rsplit_once('-')
            .and_then(|(_, i)| i.parse().ok())
            .unwrap_or(u64::MAX);
        let (order, attempt) = {
            let mut g = state.lock();
            g.arrivals.push(started.elapsed().as_millis() as u64);
            let order = g.arrivals.len() as u64 - 1;
            let attempt = g.attempts.entry(id.clone()).or_default();
            *attempt += 1;
            (order, *attempt)
        };
        assert_eq!(path, "/messages", "the connector's send path");
        let fault = if BURST_503.contains(&order) {
            Fault::ServerError
        } else if attempt == 1 || fault(index) == Fault::Malformed {
            fault(index)
        } else {
            Fault::None
        };
        let accept = |state: &Mutex<Gateway>| {
            let mut g = state.lock();
            let gw = format!("gw-{index}-{attempt}");
            if g.taken.insert(id.clone(), gw.clone()).is_some() {
                g.duplicates += 1;
            }
            gw
        };
        let answer = match fault {
            Fault::ServerError => response("503 Service Unavailable", &[], "{\"error\":\"busy\"}"),
            Fault::Throttled => response("429 Too Many Requests", &[("retry-after", "1")], "{}"),
            Fault::Reset => {
                // RST instead of an answer: with a zero linger, the drop
                // resets the connection at once (nothing to block on).
                #[allow(deprecated, reason = "a zero SO_LINGER does not block")]
                let _ = stream.set_linger(Some(Duration::ZERO));
                return;
            }
            Fault::NoAnswer => {
                tokio::time::sleep(Duration::from_millis(REQUEST_TIMEOUT_MS * 2)).await;
                return;
            }
            Fault::Malformed => response("202 Accepted", &[], "{\"message_id\": gw-"),
            Fault::SlowBody => {
                let body = format!("{{\"message_id\":\"{}\"}}", accept(&state));
                let head = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for byte in body.as_bytes() {
                    tokio::time::sleep(Duration::from_millis(15)).await;
                    if stream.write_all(&[*byte]).await.is_err() {
                        return;
                    }
                }
                continue;
            }
            Fault::None => {
                let gw = accept(&state);
                response("202 Accepted", &[], &format!("{{\"message_id\":\"{gw}\"}}"))
            }
        };
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn start_gateway(state: Arc<Mutex<Gateway>>) -> (String, std::thread::JoinHandle<()>) {
    let (tx, rx) = std::sync::mpsc::channel();
    let handle = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send(listener.local_addr().unwrap()).unwrap();
            let started = Instant::now();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_connection(stream, Arc::clone(&state), started));
            }
        });
    });
    let addr = rx.recv().unwrap();
    (format!("http://{addr}"), handle)
}

#[test]
fn every_delivery_ends_delivered_or_dead_through_a_faulty_gateway_and_the_rate_holds() {
    let state = Arc::new(Mutex::new(Gateway::default()));
    let (gateway, _thread) = start_gateway(Arc::clone(&state));
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mhero.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[channels.sms]
connector = "sandbox"
rate = {RATE}
burst = {BURST}
count_segments = false

[channels.sms.retry]
backoff_ms = [200, 400, 800]
jitter = 0.2
max_attempts = 6

[channels.sms.http]
request_timeout_ms = {REQUEST_TIMEOUT_MS}

[plugins.config.sandbox]
base_url = "{gateway}"
webhook_secret = "{SECRET}"
"#
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
    let recipients: Vec<Value> = (0..MESSAGES)
        .map(|i| json!({"phone": format!("+23177{:07}", 2_000_000 + i)}))
        .collect();
    let (status, created) = json_of(
        with(client.post(server.url("/v1/campaigns")), &sender)
            .json_body(&json!({
                "name": "Through a faulty gateway",
                "body": {"default": "Report suspected cholera cases today."},
                "channels": ["sms"],
                "audience": {"recipients": recipients},
            }))
            .send()
            .unwrap(),
    );
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(120),
        |p| p["done"] == true,
    );

    // The gateway reports delivery of what it took, signed, in batches.
    let taken: Vec<String> = state.lock().taken.values().cloned().collect();
    for chunk in taken.chunks(200) {
        let receipts: Vec<Value> = chunk
            .iter()
            .map(|gw| json!({"message_id": gw, "status": "delivered"}))
            .collect();
        let body = json!({"receipts": receipts}).to_string();
        let r = client
            .post(server.url("/webhooks/sms"))
            .header(
                "x-sandbox-signature",
                mhero_plugin_sandbox::sign(SECRET, body.as_bytes()),
            )
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }
    let malformed = (0..u64::from(MESSAGES))
        .filter(|&i| fault(i) == Fault::Malformed)
        .count() as u64;
    let p = wait_campaign(
        &client,
        &server,
        &sender,
        &id,
        Duration::from_secs(30),
        |p| p["delivered"].as_u64() == Some(u64::from(MESSAGES) - malformed),
    );
    // Every delivery ended: delivered, or dead with the reason.
    assert_eq!(p["dead"].as_u64(), Some(malformed), "{p}");
    assert_eq!(p["queued"], 0, "{p}");
    assert!(p["retries"].as_u64().unwrap() >= 200, "{p}");
    let (_, dead) = get_json(&client, &server, &sender, "/v1/dead-letters?limit=1000");
    let dead = dead.as_array().unwrap();
    assert_eq!(dead.len() as u64, malformed);
    // The last ones, as the dashboard asks: the same, still in order.
    let (_, last) = get_json(
        &client,
        &server,
        &sender,
        "/v1/dead-letters?newest=true&limit=3",
    );
    assert_eq!(last.as_array().unwrap(), &dead[dead.len() - 3..]);
    for d in dead {
        let index: u64 = d["id"]
            .as_str()
            .unwrap()
            .rsplit_once('-')
            .unwrap()
            .1
            .parse()
            .unwrap();
        assert_eq!(fault(index), Fault::Malformed, "{d}");
        assert!(
            d["reason"]
                .as_str()
                .unwrap()
                .contains("unreadable acceptance"),
            "{d}"
        );
    }
    let g = state.lock();
    // Nothing was taken twice, and everything not malformed was taken.
    assert_eq!(g.duplicates, 0);
    assert_eq!(g.taken.len() as u64, u64::from(MESSAGES) - malformed);
    // Every fault was met, and retried.
    for (index, class) in [
        (8, Fault::ServerError),
        (101, Fault::Throttled),
        (2, Fault::Reset),
        (3, Fault::NoAnswer),
    ] {
        assert_eq!(fault(index), class);
        let attempts = g.attempts[&format!("{id}-{index}")];
        assert!(attempts >= 2, "{class:?}: {attempts} attempts");
    }
    // The rate, retries included: no second of arrivals holds more than
    // the rate and its burst (5 % for scheduling jitter on a shared
    // machine), and all requests took at least as long as the rate allows.
    let arrivals = &g.arrivals;
    let mut most = 0;
    let mut lo = 0;
    for hi in 0..arrivals.len() {
        while arrivals[hi] - arrivals[lo] >= 1000 {
            lo += 1;
        }
        most = most.max(hi - lo + 1);
    }
    assert!(
        most <= (RATE + BURST + RATE / 20) as usize,
        "{most} requests within one second at {RATE}/s"
    );
    let span_ms = arrivals.last().unwrap() - arrivals[0];
    assert!(
        span_ms >= (arrivals.len() as u64 - u64::from(BURST)) * 1000 / u64::from(RATE),
        "{} requests in {span_ms} ms at {RATE}/s",
        arrivals.len()
    );
    drop(g);
    assert!(server.stop().success());
}
