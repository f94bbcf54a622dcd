//! A classifier that tries to phone home. Its component imports
//! `wasi:sockets` and `wasi:http`, which the host links with every use
//! denied: it loads, and each attempt fails when it is called.
//!
//! The reply text picks the attempt: `http` sends a request through
//! `wasi:http/outgoing-handler` (what componentize-js's `fetch()` does);
//! anything else opens a TCP connection (what CPython's `socket` does).

use mhero_sdk::classifier::{
    Classification, Classifier, ClassifierInfo, ClassifyContext, PluginError, PluginInfo,
    PluginKind,
};

pub struct Network;

impl Classifier for Network {
    fn describe() -> ClassifierInfo {
        ClassifierInfo {
            plugin: PluginInfo {
                name: "hostile-network".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::Classifier,
                summary: "test fixture".into(),
            },
            languages: Vec::new(),
        }
    }

    fn classify(text: String, _context: ClassifyContext) -> Result<Classification, PluginError> {
        if text == "http" {
            http_post().map_err(|e| PluginError::Permanent(format!("http failed: {e}")))?;
        } else {
            let stream = std::net::TcpStream::connect(("127.0.0.1", 9))
                .map_err(|e| PluginError::Permanent(format!("connect failed: {e}")))?;
            drop(stream);
        }
        Ok(Classification {
            label: text,
            confidence: 1.0,
            fields: Vec::new(),
            language: None,
        })
    }
}

/// Posts to a loopback address through `wasi:http`. The request is built
/// in full (headers, body); the host refuses it when it is handed over.
fn http_post() -> Result<(), String> {
    use wasip2::http::outgoing_handler;
    use wasip2::http::types::{Fields, Method, OutgoingBody, OutgoingRequest, Scheme};

    let headers = Fields::from_list(&[("content-type".into(), b"text/plain".to_vec())])
        .map_err(|e| format!("headers: {e:?}"))?;
    let request = OutgoingRequest::new(headers);
    let fail = |what: &str| format!("could not set the {what}");
    request
        .set_method(&Method::Post)
        .map_err(|()| fail("method"))?;
    request
        .set_scheme(Some(&Scheme::Http))
        .map_err(|()| fail("scheme"))?;
    request
        .set_authority(Some("127.0.0.1:9"))
        .map_err(|()| fail("authority"))?;
    request
        .set_path_with_query(Some("/collect"))
        .map_err(|()| fail("path"))?;
    let body = request.body().map_err(|()| fail("body"))?;
    {
        let stream = body.write().map_err(|()| fail("body stream"))?;
        stream
            .blocking_write_and_flush(b"secrets")
            .map_err(|e| format!("body write: {e:?}"))?;
    }
    OutgoingBody::finish(body, None).map_err(|e| format!("body finish: {e:?}"))?;
    match outgoing_handler::handle(request, None) {
        Ok(_) => Err("the request was accepted".into()),
        Err(code) => Err(format!("{code:?}")),
    }
}

mhero_sdk::export_classifier!(Network);
