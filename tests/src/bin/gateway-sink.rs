//! `gateway-sink`: a JSON SMS gateway on loopback, for the HTTP benchmarks
//! and the cross-process crash test. It speaks the sandbox connector's
//! protocol over real HTTP (`POST /messages` or `/send`, `POST /messages/batch`,
//! bearer token, `Idempotency-Key`), answers after an optional latency,
//! and appends every message's idempotency key and recipient to its log
//! file, so a test can count what reached the gateway, duplicates
//! included, from a process that never dies with the broker.
//!
//! It prints `listening on http://<addr>` on its first stdout line.
//! `GET /stats` flushes the log and answers the counts as JSON.

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use clap::Parser;
use serde_json::{Value, json};

#[derive(Parser)]
#[command(about = "A JSON SMS gateway on loopback that records what it receives")]
struct Args {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Time before each answer (ms): the gateway's latency.
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Token expected in `Authorization: Bearer …`.
    #[arg(long, default_value = "sandbox-token")]
    token: String,
    /// File that gets one line per message: `<idempotency key>\t<to>`.
    #[arg(long)]
    log: Option<PathBuf>,
    /// Worker threads of the sink's runtime.
    #[arg(long, default_value_t = 1)]
    threads: usize,
}

struct Sink {
    latency: Duration,
    expected_auth: String,
    log: Option<parking_lot::Mutex<std::io::BufWriter<std::fs::File>>>,
    seen: parking_lot::Mutex<HashSet<String>>,
    requests: AtomicU64,
    messages: AtomicU64,
    duplicates: AtomicU64,
    next_id: AtomicU64,
}

impl Sink {
    fn record(&self, key: &str, to: &str) -> String {
        self.messages.fetch_add(1, Ordering::Relaxed);
        if !self.seen.lock().insert(key.to_string()) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(log) = &self.log {
            let _ = writeln!(log.lock(), "{key}\t{to}");
        }
        format!("gw-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    async fn admit(&self, headers: &HeaderMap) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if !self.latency.is_zero() {
            tokio::time::sleep(self.latency).await;
        }
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        (auth != self.expected_auth).then(|| {
            (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "bad or missing token"})),
            )
                .into_response()
        })
    }
}

fn bad_request(what: &str) -> Response {
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"error": what, "code": "bad_request"})),
    )
        .into_response()
}

async fn one(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = sink.admit(&headers).await {
        return refused;
    }
    let Ok(m) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("unreadable message");
    };
    let (Some(id), Some(to)) = (m["id"].as_str(), m["to"].as_str()) else {
        return bad_request("message needs id and to");
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(id);
    let message_id = sink.record(key, to);
    (
        StatusCode::ACCEPTED,
        axum::Json(json!({"message_id": message_id})),
    )
        .into_response()
}

async fn batch(State(sink): State<Arc<Sink>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(refused) = sink.admit(&headers).await {
        return refused;
    }
    let Ok(b) = serde_json::from_slice::<Value>(&body) else {
        return bad_request("unreadable batch");
    };
    let Some(messages) = b["messages"].as_array() else {
        return bad_request("batch needs messages");
    };
    let results: Vec<Value> = messages
        .iter()
        .map(|m| {
            let id = m["id"].as_str().unwrap_or_default();
            let to = m["to"].as_str().unwrap_or_default();
            json!({"id": id, "message_id": sink.record(id, to)})
        })
        .collect();
    axum::Json(json!({"results": results})).into_response()
}

async fn stats(State(sink): State<Arc<Sink>>) -> Response {
    if let Some(log) = &sink.log {
        let _ = log.lock().flush();
    }
    axum::Json(json!({
        "requests": sink.requests.load(Ordering::Relaxed),
        "messages": sink.messages.load(Ordering::Relaxed),
        "unique": sink.seen.lock().len(),
        "duplicates": sink.duplicates.load(Ordering::Relaxed),
    }))
    .into_response()
}

fn main() -> Result<()> {
    let args = Args::parse();
    let log = match &args.log {
        Some(path) => Some(parking_lot::Mutex::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ))),
        None => None,
    };
    let sink = Arc::new(Sink {
        latency: Duration::from_millis(args.latency_ms),
        expected_auth: format!("Bearer {}", args.token),
        log,
        seen: parking_lot::Mutex::new(HashSet::new()),
        requests: AtomicU64::new(0),
        messages: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        next_id: AtomicU64::new(1),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(1))
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("binding {}", args.listen))?;
        println!("listening on http://{}", listener.local_addr()?);
        let app = Router::new()
            .route("/messages", post(one))
            // The same message as JSON, as the SDK's JavaScript connector
            // example (`json-gateway`) sends it.
            .route("/send", post(one))
            .route("/messages/batch", post(batch))
            .route("/stats", get(stats))
            .with_state(sink);
        axum::serve(listener, app).await?;
        Ok(())
    })
}
