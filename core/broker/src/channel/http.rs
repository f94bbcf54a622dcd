//! The real HTTP transport: one client per channel (its own keep-alive
//! pool), rustls with the system's roots (and a channel's own `ca_file`),
//! HTTP/2 where the server offers it through ALPN, no redirects (a redirect could lead outside the allowed
//! hosts), connect and request timeouts, and a cap on the response size.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::transport::{BoxFuture, Transport, TransportError, redact};
use crate::plugin::bindings::{Header, HttpRequest, HttpResponse};

/// `channels.<name>.http`: how the channel talks to a real gateway.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Most time to open a connection (TCP and TLS), ms.
    pub connect_timeout_ms: u64,
    /// Most time for a whole exchange, response body included, ms.
    pub request_timeout_ms: u64,
    /// Largest response body read; a larger one is an error.
    pub max_response_bytes: usize,
    /// How long an idle keep-alive connection is kept, ms.
    pub idle_timeout_ms: u64,
    /// A PEM file of certificates trusted beside the system's roots: a
    /// gateway whose certificate a private CA signed (or a self-signed one).
    pub ca_file: Option<PathBuf>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            max_response_bytes: 1 << 20,
            idle_timeout_ms: 90_000,
            ca_file: None,
        }
    }
}

impl HttpConfig {
    pub fn validate(&self, path: &str) -> Result<(), String> {
        if self.connect_timeout_ms == 0 || self.request_timeout_ms == 0 {
            return Err(format!(
                "{path}.connect_timeout_ms and request_timeout_ms must be > 0"
            ));
        }
        if self.max_response_bytes < 1024 {
            return Err(format!("{path}.max_response_bytes must be >= 1024"));
        }
        Ok(())
    }
}

#[derive(Clone)]
pub struct HttpTransport {
    client: reqwest::Client,
    config: HttpConfig,
    warmth: std::sync::Arc<Warmth>,
}

/// Whether the pool may hold a live connection. While it may not (no
/// answer yet, or none for an idle timeout), an exchange goes alone and
/// the others wait for it: its connection tells the pool whether the
/// gateway speaks HTTP/2 (ALPN), and then every request shares that one
/// connection. Without it, a window of requests on a cold pool opens a
/// TLS connection each, all at once, to a gateway that needs only one.
/// Over HTTP/1.1 it costs one round trip at a cold start.
struct Warmth {
    origin: std::time::Instant,
    /// When an exchange last ended, ms after `origin` (0: never).
    last_ms: std::sync::atomic::AtomicU64,
    alone: tokio::sync::Mutex<()>,
}

impl HttpTransport {
    /// A client for one channel; `pool` is how many idle connections per
    /// host it keeps (the channel's window).
    pub fn new(config: &HttpConfig, pool: usize) -> Result<Self, String> {
        let mut builder = reqwest::Client::builder();
        if let Some(path) = &config.ca_file {
            for certificate in read_certificates(path)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        let client = builder
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .pool_idle_timeout(Duration::from_millis(config.idle_timeout_ms))
            .pool_max_idle_per_host(pool)
            .redirect(reqwest::redirect::Policy::none())
            .tcp_nodelay(true)
            .user_agent(concat!("mhero/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            config: config.clone(),
            warmth: std::sync::Arc::new(Warmth {
                origin: std::time::Instant::now(),
                last_ms: Default::default(),
                alone: Default::default(),
            }),
        })
    }

    /// ms after the transport's start, never 0.
    fn now_ms(&self) -> u64 {
        self.warmth.origin.elapsed().as_millis() as u64 + 1
    }

    fn cold(&self) -> bool {
        let last = self
            .warmth
            .last_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        last == 0 || self.now_ms().saturating_sub(last) >= self.config.idle_timeout_ms
    }

    /// One exchange; alone while the pool is cold (see [`Warmth`]). Any
    /// outcome warms it: a failure lets the rest through at once rather
    /// than one by one behind a gateway that does not answer.
    async fn send_one(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let _alone = if self.cold() {
            let alone = self.warmth.alone.lock().await;
            self.cold().then_some(alone)
        } else {
            None
        };
        let answer = self.exchange(request).await;
        self.warmth
            .last_ms
            .store(self.now_ms(), std::sync::atomic::Ordering::Relaxed);
        answer
    }

    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let HttpRequest {
            method,
            url,
            headers,
            body,
        } = request;
        // What errors may show of the URL; worked out only for an error.
        let url = url.as_str();
        let network = |e: reqwest::Error| {
            if e.is_timeout() {
                TransportError::Timeout {
                    target: redact(url),
                    ms: self.config.request_timeout_ms,
                }
            } else {
                TransportError::Network {
                    target: redact(url),
                    message: describe(&e),
                }
            }
        };
        let method = reqwest::Method::from_bytes(method.as_bytes()).map_err(|_| {
            TransportError::Unsupported {
                target: redact(url),
            }
        })?;
        let mut builder = self.client.request(method, url);
        for h in &headers {
            builder = builder.header(h.name.as_str(), h.value.as_str());
        }
        let mut response = builder.body(body).send().await.map_err(network)?;
        let status = response.status().as_u16();
        let limit = self.config.max_response_bytes;
        if response.content_length().is_some_and(|n| n > limit as u64) {
            return Err(TransportError::TooLarge {
                target: redact(url),
                limit,
            });
        }
        let headers = response
            .headers()
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(network)? {
            if body.len() + chunk.len() > limit {
                return Err(TransportError::TooLarge {
                    target: redact(url),
                    limit,
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

/// The certificates of a PEM file; an unreadable file, or one with none,
/// is an error naming it.
fn read_certificates(path: &std::path::Path) -> Result<Vec<reqwest::Certificate>, String> {
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .map_err(|e| format!("ca_file {} is not PEM certificates: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "ca_file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// The error and its causes in one line, without the URL (reqwest puts
/// the full URL, query included, in its own message).
fn describe(e: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        parts.push(s.to_string());
        source = s.source();
    }
    let kind = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken response"
    } else if e.is_request() {
        "request failed"
    } else {
        "HTTP error"
    };
    if parts.is_empty() {
        kind.to_string()
    } else {
        format!("{kind}: {}", parts.join(": "))
    }
}

impl Transport for HttpTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(self.send_one(request))
    }
}
