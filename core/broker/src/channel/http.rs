//! The real HTTP transport: one keep-alive pool per channel (see
//! [`super::pool`]), rustls with the system's roots (and a channel's own
//! `ca_file`), HTTP/2 where the server offers it through ALPN, no
//! redirects (a redirect could lead outside the allowed hosts), connect
//! and request timeouts, and a cap on the response size.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::{Deserialize, Serialize};

use super::pool::{Pool, SendError};
use super::transport::{BoxFuture, Transport, TransportError, redact};
use crate::plugin::bindings::{Header, HttpRequest, HttpResponse};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What the transport says it is, unless the connector says otherwise.
const USER_AGENT: &str = concat!("mhero/", env!("CARGO_PKG_VERSION"));

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

type Connector = Bounded<hyper_rustls::HttpsConnector<HttpConnector>>;

#[derive(Clone)]
pub struct HttpTransport {
    pool: Arc<Pool<Connector>>,
    config: HttpConfig,
    warmth: Arc<Warmth>,
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
        let mut roots = rustls::RootCertStore::empty();
        // The system's roots; a certificate it cannot parse is skipped, as
        // the system's other clients skip it.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        if let Some(path) = &config.ca_file {
            for certificate in read_certificates(path)? {
                roots.add(certificate).map_err(|e| {
                    format!(
                        "ca_file {} holds a certificate that cannot be trusted: {e}",
                        path.display()
                    )
                })?;
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let mut tcp = HttpConnector::new();
        tcp.enforce_http(false);
        tcp.set_nodelay(true);
        let connector = Bounded {
            inner: hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls)
                .https_or_http()
                .enable_http1()
                .enable_http2()
                .wrap_connector(tcp),
            timeout: Duration::from_millis(config.connect_timeout_ms),
        };
        Ok(Self {
            pool: Pool::new(
                connector,
                pool,
                Duration::from_millis(config.idle_timeout_ms),
            ),
            config: config.clone(),
            warmth: Arc::new(Warmth {
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

    /// One exchange, within the request timeout; alone while the pool is
    /// cold (see [`Warmth`]). Any outcome warms it: a failure lets the rest
    /// through at once rather than one by one behind a gateway that does
    /// not answer.
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

    /// The request and its answer within `request_timeout_ms`.
    async fn exchange(&self, request: HttpRequest) -> Result<HttpResponse, TransportError> {
        let HttpRequest {
            method,
            url,
            headers,
            body,
        } = request;
        let limit = Duration::from_millis(self.config.request_timeout_ms);
        match tokio::time::timeout(limit, self.answer(&url, method, headers, body)).await {
            Ok(answer) => answer,
            Err(_) => Err(TransportError::Timeout {
                target: redact(&url),
                ms: self.config.request_timeout_ms,
            }),
        }
    }

    async fn answer(
        &self,
        url: &str,
        method: String,
        headers: Vec<Header>,
        body: Vec<u8>,
    ) -> Result<HttpResponse, TransportError> {
        // What errors may show of the URL is worked out only for an error.
        let network = |message: String| TransportError::Network {
            target: redact(url),
            message,
        };
        let unsupported = || TransportError::Unsupported {
            target: redact(url),
        };
        let method = http::Method::from_bytes(method.as_bytes()).map_err(|_| unsupported())?;
        let (uri, basic) = without_user_info(url.parse::<Uri>().map_err(|_| unsupported())?)
            .map_err(|_| unsupported())?;
        let mut builder = http::Request::builder().method(method).uri(uri);
        let (mut agent, mut accept, mut authorization) = (false, false, false);
        for h in &headers {
            agent |= h.name.eq_ignore_ascii_case("user-agent");
            accept |= h.name.eq_ignore_ascii_case("accept");
            authorization |= h.name.eq_ignore_ascii_case("authorization");
            builder = builder.header(h.name.as_str(), h.value.as_str());
        }
        if !agent {
            builder = builder.header(http::header::USER_AGENT, USER_AGENT);
        }
        if !accept {
            builder = builder.header(http::header::ACCEPT, "*/*");
        }
        if let (Some(basic), false) = (basic, authorization) {
            builder = builder.header(http::header::AUTHORIZATION, basic);
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| network(format!("cannot build the request: {e}")))?;
        let uri = request.uri().clone();
        let (response, connection) = self.pool.send(request).await.map_err(|e| match e {
            SendError::Connect(e) => network(describe("cannot connect", &*e)),
            SendError::Request(e) => network(describe("request failed", &e)),
        })?;
        let (parts, mut incoming) = response.into_parts();
        let limit = self.config.max_response_bytes;
        let too_large = || TransportError::TooLarge {
            target: redact(url),
            limit,
        };
        let declared = parts
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        if declared.is_some_and(|n| n > limit as u64) {
            return Err(too_large());
        }
        let headers = parts
            .headers
            .iter()
            .map(|(name, value)| Header {
                name: name.as_str().to_string(),
                value: String::from_utf8_lossy(value.as_bytes()).into_owned(),
            })
            .collect();
        let mut body = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(frame) = incoming.frame().await {
            let frame = frame.map_err(|e| network(describe("broken response", &e)))?;
            if let Ok(chunk) = frame.into_data() {
                if body.len() + chunk.len() > limit {
                    return Err(too_large());
                }
                body.extend_from_slice(&chunk);
            }
        }
        // Read to the end: the connection may serve the next request.
        self.pool.put(&uri, connection);
        Ok(HttpResponse {
            status: parts.status.as_u16(),
            headers,
            body,
        })
    }
}

/// The URL without its user information, and that information as a Basic
/// `Authorization` value (`https://user:password@host/…`, which HTTP
/// clients send that way; the URL itself must not carry it, as HTTP/2's
/// `:authority` would).
fn without_user_info(uri: Uri) -> Result<(Uri, Option<String>), http::Error> {
    let Some((user_info, host)) = uri.authority().and_then(|a| a.as_str().rsplit_once('@')) else {
        return Ok((uri, None));
    };
    let (user, password) = user_info.split_once(':').unwrap_or((user_info, ""));
    let decode = |s: &str| percent_encoding::percent_decode_str(s).collect::<Vec<u8>>();
    let mut credentials = decode(user);
    credentials.push(b':');
    credentials.extend(decode(password));
    use base64::Engine as _;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    let host = host.to_string();
    let mut parts = uri.into_parts();
    parts.authority = Some(host.parse()?);
    Ok((Uri::from_parts(parts)?, Some(basic)))
}

/// A connector that gives up after `timeout`: the TCP connection and the
/// TLS handshake together, as `connect_timeout_ms` promises.
#[derive(Clone)]
struct Bounded<C> {
    inner: C,
    timeout: Duration,
}

impl<C> tower_service::Service<Uri> for Bounded<C>
where
    C: tower_service::Service<Uri>,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
    C::Response: Send + 'static,
{
    type Response = C::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<C::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let timeout = self.timeout;
        Box::pin(async move {
            match tokio::time::timeout(timeout, connecting).await {
                Ok(connected) => connected.map_err(Into::into),
                Err(_) => Err(format!("no connection within {} ms", timeout.as_millis()).into()),
            }
        })
    }
}

/// The certificates of a PEM file; an unreadable file, or one with none,
/// is an error naming it.
fn read_certificates(
    path: &std::path::Path,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let pem =
        std::fs::read(path).map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
    let certificates = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("ca_file {} is not PEM certificates: {e}", path.display()))?;
    if certificates.is_empty() {
        return Err(format!(
            "ca_file {} holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
            path.display()
        ));
    }
    Ok(certificates)
}

/// `kind`, then the error and its causes in one line, each cause only if
/// it adds to the one before. None of them holds the URL.
fn describe(kind: &str, e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = vec![e.to_string()];
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !parts.last().is_some_and(|last| last.contains(&text)) {
            parts.push(text);
        }
        source = s.source();
    }
    format!("{kind}: {}", parts.join(": "))
}

impl Transport for HttpTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        Box::pin(self.send_one(request))
    }
}
