//! How a connector's request reaches its gateway.
//!
//! A [`Transport`] takes the HTTP request a connector built and answers with
//! the gateway's response, asynchronously: a channel keeps up to its window
//! of requests in flight, so its rate is reached whatever the gateway's
//! latency. [`ChannelTransport`] is what a channel uses: it checks the
//! request against the hosts the connector's manifest allows, then hands it
//! to the simulator (`sandbox://`) or to the HTTP client (`http://`,
//! `https://`).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use super::http::HttpTransport;
use super::sandbox::SandboxTransport;
use crate::plugin::bindings::{HttpRequest, HttpResponse};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Why a request got no answer from its gateway. Messages never carry the
/// query string, user info or headers of the request (they hold secrets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("{target}: host not allowed for plugin {plugin} (allowed: {allowed})")]
    NotAllowed {
        target: String,
        plugin: String,
        allowed: String,
    },
    #[error("{target}: unsupported URL (use http://, https:// or sandbox://)")]
    Unsupported { target: String },
    #[error("{target}: no answer within {ms} ms")]
    Timeout { target: String, ms: u64 },
    #[error("{target}: {message}")]
    Network { target: String, message: String },
    #[error("{target}: response over the {limit}-byte limit")]
    TooLarge { target: String, limit: usize },
}

impl TransportError {
    /// Whether trying again later may succeed (network trouble), as opposed
    /// to a request this channel can never make (configuration).
    pub fn transient(&self) -> bool {
        matches!(
            self,
            TransportError::Timeout { .. }
                | TransportError::Network { .. }
                | TransportError::TooLarge { .. }
        )
    }
}

/// Performs one request.
pub trait Transport: Send + Sync {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>>;
}

/// `scheme://host[:port]/path` of a URL, without user info, query or
/// fragment: what errors and logs may show.
pub fn redact(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let rest = rest.split(['?', '#']).next().unwrap_or("");
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let host = authority.rsplit('@').next().unwrap_or(authority);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// The scheme and `host[:port]` a URL names, as written.
fn scheme_and_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = authority.rsplit('@').next()?;
    (!host.is_empty()).then_some((scheme, host))
}

/// The scheme and `host[:port]` a URL names, lowercased.
pub fn target_host(url: &str) -> Option<(String, String)> {
    let (scheme, host) = scheme_and_host(url)?;
    Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// Hosts a connector may reach: its manifest's `allowed_hosts`, where an
/// entry `config:<key>` stands for the host of the URL in that plugin
/// setting (so an operator points a connector at their gateway in config,
/// and the manifest still bounds what it can reach).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AllowedHosts(Arc<[String]>);

impl AllowedHosts {
    pub fn resolve(manifest: &[String], settings: &dyn Fn(&str) -> Option<String>) -> Self {
        let mut hosts = Vec::new();
        for entry in manifest {
            match entry.strip_prefix("config:") {
                Some(key) => {
                    if let Some((scheme, host)) = settings(key).as_deref().and_then(target_host) {
                        hosts.push(if scheme == "sandbox" {
                            format!("sandbox:{host}")
                        } else {
                            host
                        });
                    }
                }
                None => hosts.push(entry.to_ascii_lowercase()),
            }
        }
        Self(hosts.into())
    }

    /// Whether `url` may be requested (checked on every request, so
    /// without allocating).
    pub fn allows(&self, url: &str) -> bool {
        let Some((scheme, host)) = scheme_and_host(url) else {
            return false;
        };
        let sandbox = scheme.eq_ignore_ascii_case("sandbox");
        self.0
            .iter()
            .any(|entry| match entry.strip_prefix("sandbox:") {
                Some(simulated) => sandbox && simulated.eq_ignore_ascii_case(host),
                None => !sandbox && entry.eq_ignore_ascii_case(host),
            })
    }

    pub fn has_sandbox(&self) -> bool {
        self.0.iter().any(|h| h.starts_with("sandbox:"))
    }

    pub fn list(&self) -> String {
        self.0.join(", ")
    }
}

/// A channel's way out: the allow-list, then the simulator or real HTTP.
pub struct ChannelTransport {
    plugin: String,
    allowed: AllowedHosts,
    sandbox: Option<Arc<SandboxTransport>>,
    http: HttpTransport,
}

impl ChannelTransport {
    pub fn new(
        plugin: &str,
        allowed: AllowedHosts,
        sandbox: Option<Arc<SandboxTransport>>,
        http: HttpTransport,
    ) -> Self {
        Self {
            plugin: plugin.to_string(),
            allowed,
            sandbox,
            http,
        }
    }
}

impl Transport for ChannelTransport {
    fn send(&self, request: HttpRequest) -> BoxFuture<'_, Result<HttpResponse, TransportError>> {
        if !self.allowed.allows(&request.url) {
            let e = TransportError::NotAllowed {
                target: redact(&request.url),
                plugin: self.plugin.clone(),
                allowed: self.allowed.list(),
            };
            return Box::pin(async move { Err(e) });
        }
        let scheme = request.url.split_once("://").map(|(s, _)| s);
        match (scheme, &self.sandbox) {
            (Some("sandbox"), Some(sandbox)) => sandbox.send(request),
            (Some("http" | "https"), _) => self.http.send(request),
            _ => {
                let e = TransportError::Unsupported {
                    target: redact(&request.url),
                };
                Box::pin(async move { Err(e) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_drops_credentials_and_queries() {
        assert_eq!(
            redact("http://user:pw@gw.example:13013/cgi-bin/sendsms?username=u&password=p"),
            "http://gw.example:13013/cgi-bin/sendsms"
        );
        assert_eq!(
            redact("https://graph.example/v19/123/messages#x"),
            "https://graph.example/v19/123/messages"
        );
        assert_eq!(redact("sandbox://gateway"), "sandbox://gateway");
    }

    #[test]
    fn allowed_hosts_resolve_config_entries() {
        let allowed = AllowedHosts::resolve(
            &[
                "sandbox:gateway".into(),
                "config:base_url".into(),
                "API.Example".into(),
            ],
            &|key| (key == "base_url").then(|| "http://127.0.0.1:9000/v1".to_string()),
        );
        assert!(allowed.allows("sandbox://gateway/messages"));
        assert!(allowed.allows("http://127.0.0.1:9000/v1/messages"));
        assert!(allowed.allows("https://api.example/send"));
        assert!(
            !allowed.allows("http://127.0.0.1:9001/v1/messages"),
            "another port"
        );
        assert!(
            !allowed.allows("http://evil@127.0.0.2:9000/"),
            "user info does not fool it"
        );
        assert!(!allowed.allows("not a url"));
        assert!(
            allowed.allows("HTTPS://API.example/send"),
            "case does not matter"
        );
        assert!(
            !allowed.allows("http://gateway/messages"),
            "the simulator's name is not a real host"
        );
        assert!(!allowed.allows("sandbox://api.example/"), "nor the reverse");
        assert!(!allowed.allows("http:///path"), "no host");
        let none = AllowedHosts::resolve(&["config:base_url".into()], &|_| None);
        assert!(!none.allows("http://127.0.0.1:9000/"));
    }
}
