//! HTTPS to a gateway, as hosted gateways serve it: the HTTP transport
//! trusts a gateway's own certificate through `ca_file`, speaks HTTP/2
//! when the gateway offers it through ALPN (every request on one
//! connection, even in a burst on a cold pool) and HTTP/1.1 when it does not, and refuses a certificate it
//! was not told to trust without the request reaching the gateway.

use std::ffi::OsString;
use std::path::Path;

use mhero_broker::channel::{HttpConfig, HttpTransport, Transport};
use mhero_broker::plugin::bindings::{Header, HttpRequest};

use super::http_crash::start_sink_with;

const CONCURRENT: usize = 20;

fn request(base: &str, method: &str, path: &str, body: Vec<u8>) -> HttpRequest {
    HttpRequest {
        method: method.into(),
        url: format!("{base}{path}"),
        headers: vec![Header {
            name: "authorization".into(),
            value: "Bearer sandbox-token".into(),
        }],
        body,
    }
}

fn message(base: &str, i: usize) -> HttpRequest {
    let body = serde_json::json!({"id": format!("tls-{i}"), "to": format!("+2317700{i:04}")});
    request(base, "POST", "/messages", body.to_string().into_bytes())
}

fn trusting(cert: &Path, idle_timeout_ms: u64) -> HttpTransport {
    HttpTransport::new(
        &HttpConfig {
            ca_file: Some(cert.to_path_buf()),
            idle_timeout_ms,
            ..HttpConfig::default()
        },
        64,
    )
    .unwrap()
}

/// `CONCURRENT` messages at once on a cold transport (the sink answers
/// after 50 ms, so they overlap), then, once its connections have been
/// idle longer than the transport keeps them, as many again; answers the
/// sink's stats.
async fn exchange(alpn: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<OsString> = vec![
        "--latency-ms".into(),
        "50".into(),
        "--tls".into(),
        dir.path().as_os_str().to_owned(),
        "--alpn".into(),
        alpn.into(),
    ];
    let sink = start_sink_with(&args, "https://");
    let base = format!("https://{}", sink.addr);

    // Not told to trust the sink's certificate: refused before any request.
    let untrusted = HttpTransport::new(&HttpConfig::default(), 8).unwrap();
    let refused = untrusted.send(message(&base, 0)).await.unwrap_err();
    assert!(
        refused.to_string().contains("certificate"),
        "the error names the certificate: {refused}"
    );

    let http = trusting(&dir.path().join("cert.pem"), 300);
    for burst in 0..2 {
        if burst > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(800)).await;
        }
        let mut sends = tokio::task::JoinSet::new();
        for i in 0..CONCURRENT {
            let (http, request) = (http.clone(), message(&base, burst * CONCURRENT + i));
            sends.spawn(async move { http.send(request).await });
        }
        while let Some(answer) = sends.join_next().await {
            let answer = answer.unwrap().unwrap();
            assert_eq!(
                answer.status,
                202,
                "{}",
                String::from_utf8_lossy(&answer.body)
            );
        }
    }
    let stats = http
        .send(request(&base, "GET", "/stats", Vec::new()))
        .await
        .unwrap();
    serde_json::from_slice(&stats.body).unwrap()
}

/// Every request reached the sink, all in `version`.
fn assert_all_in(stats: &serde_json::Value, version: &str) {
    let sent = 2 * CONCURRENT as u64;
    assert_eq!(stats["requests"], sent, "{stats}");
    assert_eq!(
        stats["http_versions"],
        serde_json::json!({ version: sent }),
        "{stats}"
    );
}

#[tokio::test]
async fn http2_is_spoken_where_the_gateway_offers_it() {
    let stats = exchange("h2,http/1.1").await;
    assert_all_in(&stats, "HTTP/2.0");
    // The refused handshake never completed. Each burst found the pool
    // cold (new, then idle past its timeout), and shared one connection
    // instead of opening one per request.
    assert_eq!(
        stats["connections"], 2,
        "one multiplexed connection per burst: {stats}"
    );
}

#[tokio::test]
async fn http1_over_tls_where_the_gateway_offers_only_it() {
    let stats = exchange("http/1.1").await;
    assert_all_in(&stats, "HTTP/1.1");
    // Overlapping requests on HTTP/1.1 need connections of their own.
    assert!(
        stats["connections"].as_u64().unwrap() > 1,
        "HTTP/1.1 does not multiplex: {stats}"
    );
}
