//! `gateway-sink`: a JSON SMS gateway on loopback, for the HTTP benchmarks
//! and the cross-process crash test. It speaks the sandbox connector's
//! protocol over real HTTP (`POST /messages` or `/send`, `POST /messages/batch`,
//! bearer token, `Idempotency-Key`), answers after an optional latency,
//! and appends every message's idempotency key and recipient to its log
//! file, so a test can count what reached the gateway, duplicates
//! included, from a process that never dies with the broker.
//!
//! With `--tls DIR` it speaks HTTPS, as hosted gateways do: a self-signed
//! certificate for `localhost` and 127.0.0.1, made at start and written to
//! `DIR/cert.pem` for clients to trust, offering HTTP/2 and HTTP/1.1
//! through ALPN (`--alpn` narrows the offer).
//!
//! It prints `listening on http://<addr>` (or `https://localhost:<port>`)
//! on its first stdout line. `GET /stats` flushes the log and answers the
//! counts as JSON, with the connections accepted and the requests per HTTP
//! version.

use std::collections::{BTreeMap, HashSet};
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
use axum::http::{HeaderMap, StatusCode, Version};
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
    /// Serve HTTPS with a self-signed certificate written to DIR/cert.pem.
    #[arg(long, value_name = "DIR")]
    tls: Option<PathBuf>,
    /// Protocols offered through ALPN with --tls, in order of preference.
    #[arg(long, value_delimiter = ',', default_value = "h2,http/1.1")]
    alpn: Vec<String>,
}

struct Sink {
    latency: Duration,
    expected_auth: String,
    log: Option<parking_lot::Mutex<std::io::BufWriter<std::fs::File>>>,
    seen: parking_lot::Mutex<HashSet<String>>,
    requests: AtomicU64,
    connections: Arc<AtomicU64>,
    versions: parking_lot::Mutex<BTreeMap<String, u64>>,
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

    async fn admit(&self, version: Version, headers: &HeaderMap) -> Option<Response> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        *self
            .versions
            .lock()
            .entry(format!("{version:?}"))
            .or_default() += 1;
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

async fn one(
    State(sink): State<Arc<Sink>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = sink.admit(version, &headers).await {
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

async fn batch(
    State(sink): State<Arc<Sink>>,
    version: Version,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = sink.admit(version, &headers).await {
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
        "connections": sink.connections.load(Ordering::Relaxed),
        "http_versions": *sink.versions.lock(),
    }))
    .into_response()
}

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    let connections = Arc::new(AtomicU64::new(0));
    let sink = Arc::new(Sink {
        latency: Duration::from_millis(args.latency_ms),
        expected_auth: format!("Bearer {}", args.token),
        log,
        seen: parking_lot::Mutex::new(HashSet::new()),
        requests: AtomicU64::new(0),
        connections: Arc::clone(&connections),
        versions: parking_lot::Mutex::new(BTreeMap::new()),
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
        let addr = listener.local_addr()?;
        let app = Router::new()
            .route("/messages", post(one))
            // The same message as JSON, as the SDK's JavaScript connector
            // example (`json-gateway`) sends it.
            .route("/send", post(one))
            .route("/messages/batch", post(batch))
            .route("/stats", get(stats))
            .with_state(sink);
        match &args.tls {
            Some(dir) => {
                let acceptor = tls_acceptor(dir, &args.alpn)?;
                println!("listening on https://localhost:{}", addr.port());
                let listener = TlsListener::start(listener, acceptor, connections);
                axum::serve(listener, app).await?;
            }
            None => {
                println!("listening on http://{addr}");
                let listener = CountingListener {
                    inner: listener,
                    count: connections,
                };
                axum::serve(listener, app).await?;
            }
        }
        Ok(())
    })
}

/// A certificate for `localhost` and 127.0.0.1, its PEM written to
/// `dir/cert.pem`, offering `alpn`.
fn tls_acceptor(dir: &std::path::Path, alpn: &[String]) -> Result<tokio_rustls::TlsAcceptor> {
    let made =
        rcgen::generate_simple_self_signed(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cert_path = dir.join("cert.pem");
    std::fs::write(&cert_path, made.cert.pem())
        .with_context(|| format!("writing {}", cert_path.display()))?;
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(made.signing_key.serialize_der().into());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)?;
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Plain TCP, counting the connections accepted.
struct CountingListener {
    inner: tokio::net::TcpListener,
    count: Arc<AtomicU64>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let accepted = axum::serve::Listener::accept(&mut self.inner).await;
        self.count.fetch_add(1, Ordering::Relaxed);
        accepted
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// TLS over TCP: each handshake runs in its own task, so thousands of
/// clients connecting at once do not wait on one another; a failed
/// handshake closes that connection only.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        SocketAddr,
    )>,
    addr: SocketAddr,
}

impl TlsListener {
    fn start(
        listener: tokio::net::TcpListener,
        acceptor: tokio_rustls::TlsAcceptor,
        count: Arc<AtomicU64>,
    ) -> Self {
        let addr = listener
            .local_addr()
            .expect("bound listener has an address");
        let (tx, ready) = tokio::sync::mpsc::channel(1024);
        let mut listener = listener;
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = axum::serve::Listener::accept(&mut listener).await;
                let (acceptor, tx, count) = (acceptor.clone(), tx.clone(), Arc::clone(&count));
                tokio::spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    match acceptor.accept(tcp).await {
                        Ok(tls) => {
                            count.fetch_add(1, Ordering::Relaxed);
                            let _ = tx.send((tls, peer)).await;
                        }
                        Err(e) => eprintln!("gateway-sink: TLS handshake with {peer} failed: {e}"),
                    }
                });
            }
        });
        Self { ready, addr }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(accepted) => accepted,
            // The acceptor task never ends while the listener lives.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.addr)
    }
}
