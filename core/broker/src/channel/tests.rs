//! The HTTP transport against a real HTTP server on loopback (axum on
//! 127.0.0.1:0), on real time: timeouts, caps, refusals and redirects as a
//! gateway produces them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};

use super::transport::{AllowedHosts, ChannelTransport, Transport, TransportError};
use super::{HttpConfig, HttpTransport};
use crate::plugin::bindings::{Header, HttpRequest};

struct Gateway {
    addr: std::net::SocketAddr,
    connections: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn gateway() -> Gateway {
    let app = Router::new()
        .route(
            "/echo",
            post(|headers: HeaderMap, body: axum::body::Bytes| async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                (StatusCode::ACCEPTED, [("x-auth-seen", auth)], body)
            }),
        )
        .route(
            "/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/huge", post(|| async { vec![b'x'; 4 << 20] }))
        .route(
            "/redirect",
            post(|| async { (StatusCode::FOUND, [("location", "http://127.0.0.2:1/x")]) }),
        )
        .route(
            "/throttle",
            get(|| async {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [("retry-after", "3")],
                    "slow down",
                )
                    .into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    let task = tokio::spawn(async move {
        // Count accepted connections: keep-alive reuses them.
        let listener = CountingListener {
            inner: listener,
            count: counted,
        };
        axum::serve(listener, app).await.unwrap();
    });
    Gateway {
        addr,
        connections,
        _task: task,
    }
}

struct CountingListener {
    inner: tokio::net::TcpListener,
    count: Arc<AtomicUsize>,
}

impl axum::serve::Listener for CountingListener {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (io, addr) = axum::serve::Listener::accept(&mut self.inner).await;
        self.count.fetch_add(1, Ordering::Relaxed);
        (io, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

fn request(method: &str, url: String) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        url,
        headers: vec![Header {
            name: "authorization".into(),
            value: "Bearer s3cret-token".into(),
        }],
        body: b"{\"id\":\"1-1\"}".to_vec(),
    }
}

fn transport(timeout_ms: u64) -> HttpTransport {
    HttpTransport::new(
        &HttpConfig {
            connect_timeout_ms: 1000,
            request_timeout_ms: timeout_ms,
            max_response_bytes: 1 << 20,
            ..HttpConfig::default()
        },
        8,
    )
    .unwrap()
}

#[tokio::test]
async fn requests_reach_the_gateway_over_kept_alive_connections() {
    let gw = gateway().await;
    let http = transport(2000);
    for _ in 0..20 {
        let r = http
            .send(request("POST", format!("http://{}/echo", gw.addr)))
            .await
            .unwrap();
        assert_eq!(r.status, 202);
        assert_eq!(r.body, b"{\"id\":\"1-1\"}");
        let seen = r.headers.iter().find(|h| h.name == "x-auth-seen").unwrap();
        assert_eq!(
            seen.value, "Bearer s3cret-token",
            "headers reach the gateway"
        );
    }
    assert_eq!(
        gw.connections.load(Ordering::Relaxed),
        1,
        "one kept-alive connection"
    );
}

#[tokio::test]
async fn user_information_in_a_url_is_sent_as_a_basic_credential() {
    let gw = gateway().await;
    let http = transport(2000);
    let seen = |r: &crate::plugin::bindings::HttpResponse| {
        r.headers
            .iter()
            .find(|h| h.name == "x-auth-seen")
            .map(|h| h.value.clone())
    };
    // Percent-encoded in the URL, decoded in the credential
    // ("nurse@moh:p:ss" is bnVyc2VAbW9oOnA6c3M=).
    let mut with_user = request(
        "POST",
        format!("http://nurse%40moh:p%3Ass@{}/echo", gw.addr),
    );
    with_user.headers.clear();
    let r = http.send(with_user.clone()).await.unwrap();
    assert_eq!(r.status, 202);
    assert_eq!(seen(&r).as_deref(), Some("Basic bnVyc2VAbW9oOnA6c3M="));
    // The connector's own credential wins.
    with_user.headers.push(Header {
        name: "Authorization".into(),
        value: "Bearer s3cret-token".into(),
    });
    let r = http.send(with_user).await.unwrap();
    assert_eq!(seen(&r).as_deref(), Some("Bearer s3cret-token"));
    // A URL that does not parse, or a method that is not one, is refused
    // as the channel's configuration, not retried as a network failure.
    for (method, url) in [
        ("POST", format!("http://{}/e cho", gw.addr)),
        ("PO ST", format!("http://{}/echo", gw.addr)),
    ] {
        let e = http.send(request(method, url)).await.unwrap_err();
        assert!(matches!(e, TransportError::Unsupported { .. }), "{e:?}");
        assert!(!e.transient());
    }
}

#[tokio::test]
async fn network_failures_are_transient_and_never_show_secrets() {
    let gw = gateway().await;
    let http = transport(300);
    let slow = http
        .send(request(
            "POST",
            format!("http://{}/slow?password=hunter2", gw.addr),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(slow, TransportError::Timeout { ms: 300, .. }),
        "{slow:?}"
    );
    assert!(slow.transient());
    assert!(!slow.to_string().contains("hunter2"), "{slow}");

    let huge = http
        .send(request("POST", format!("http://{}/huge", gw.addr)))
        .await
        .unwrap_err();
    assert!(matches!(huge, TransportError::TooLarge { .. }), "{huge:?}");

    // Nobody listens on this port (bound, then closed).
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let refused = http
        .send(request(
            "POST",
            format!("http://user:pw@127.0.0.1:{port}/send?token=abc"),
        ))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, TransportError::Network { .. }),
        "{refused:?}"
    );
    assert!(refused.transient());
    let text = refused.to_string();
    assert!(!text.contains("abc") && !text.contains("pw"), "{text}");
}

#[tokio::test]
async fn redirects_are_not_followed_and_answers_pass_through() {
    let gw = gateway().await;
    let http = transport(2000);
    let r = http
        .send(request("POST", format!("http://{}/redirect", gw.addr)))
        .await
        .unwrap();
    assert_eq!(
        r.status, 302,
        "a redirect could lead outside the allowed hosts"
    );
    let r = http
        .send(request("GET", format!("http://{}/throttle", gw.addr)))
        .await
        .unwrap();
    assert_eq!(r.status, 429);
    assert!(
        r.headers
            .iter()
            .any(|h| h.name == "retry-after" && h.value == "3")
    );
}

#[tokio::test]
async fn only_allowed_hosts_are_reached() {
    let gw = gateway().await;
    let allowed = AllowedHosts::resolve(&["config:base_url".into()], &|_| {
        Some(format!("http://{}", gw.addr))
    });
    let t = ChannelTransport::new("x", allowed, None, transport(2000));
    let ok = t
        .send(request("POST", format!("http://{}/echo", gw.addr)))
        .await
        .unwrap();
    assert_eq!(ok.status, 202);
    let refused = t
        .send(request("POST", "http://127.0.0.1:9/echo?key=k".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(refused, TransportError::NotAllowed { .. }),
        "{refused:?}"
    );
    assert!(!refused.transient());
    let sandbox = t
        .send(request("POST", "sandbox://gateway/messages".into()))
        .await
        .unwrap_err();
    assert!(matches!(sandbox, TransportError::NotAllowed { .. }));
}

#[test]
fn a_ca_file_that_cannot_be_used_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let with = |path: std::path::PathBuf| {
        HttpTransport::new(
            &HttpConfig {
                ca_file: Some(path),
                ..HttpConfig::default()
            },
            8,
        )
        .err()
        .expect("the transport is refused")
    };
    let missing = with(dir.path().join("absent.pem"));
    assert!(
        missing.contains("cannot read ca_file") && missing.contains("absent.pem"),
        "{missing}"
    );
    let text = dir.path().join("notes.txt");
    std::fs::write(&text, "not a certificate\n").unwrap();
    let empty = with(text);
    assert!(
        empty.contains("holds no certificate") && empty.contains("notes.txt"),
        "{empty}"
    );
}

/// A gateway that answers each connection's first request and closes it
/// soon after, without saying so (no `Connection: close`), as gateways
/// behind load balancers do; it sends back the request's head.
async fn closing_gateway() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&connections);
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                let mut read = Vec::new();
                let mut buf = [0u8; 4096];
                while !read.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read.extend_from_slice(&buf[..n]),
                    }
                }
                let end = read.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                let head = &read[..end];
                let answer = format!(
                    "HTTP/1.1 202 Accepted\r\ncontent-length: {}\r\n\r\n",
                    head.len()
                );
                let _ = socket.write_all(answer.as_bytes()).await;
                let _ = socket.write_all(head).await;
                // Closed a little later, unannounced: the client has put
                // the connection back in its pool by then.
                tokio::time::sleep(Duration::from_millis(20)).await;
            });
        }
    });
    (addr, connections)
}

#[tokio::test]
async fn connections_the_gateway_closed_or_kept_idle_too_long_are_not_reused() {
    let (addr, opened) = closing_gateway().await;
    let http = transport(2000);
    for i in 0..5 {
        let r = http
            .send(request("POST", format!("http://{addr}/messages?n={i}")))
            .await
            .unwrap();
        assert_eq!(r.status, 202);
        let head = String::from_utf8(r.body).unwrap().to_ascii_lowercase();
        // HTTP/1.1 to an origin server: the path alone, the host (and its
        // port, not the default one) in `Host`.
        assert!(
            head.starts_with(&format!("post /messages?n={i} http/1.1\r\n")),
            "{head}"
        );
        assert!(head.contains(&format!("\r\nhost: {addr}\r\n")), "{head}");
        // Time for the closing to reach the client while the connection
        // waits in the pool. (Taken from the pool, a closed one is found
        // out before use; a request one refused unsent goes again on a new
        // one: either alone keeps this test passing, neither fails it.)
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(opened.load(Ordering::Relaxed), 5, "a new one each time");

    // A gateway that keeps connections: reused within the idle timeout,
    // not after it.
    let gw = gateway().await;
    let http = HttpTransport::new(
        &HttpConfig {
            idle_timeout_ms: 300,
            ..HttpConfig::default()
        },
        8,
    )
    .unwrap();
    let echo = || request("POST", format!("http://{}/echo", gw.addr));
    http.send(echo()).await.unwrap();
    http.send(echo()).await.unwrap();
    assert_eq!(gw.connections.load(Ordering::Relaxed), 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    http.send(echo()).await.unwrap();
    http.send(echo()).await.unwrap();
    assert_eq!(
        gw.connections.load(Ordering::Relaxed),
        2,
        "the idle one was dropped, its successor kept"
    );
}
