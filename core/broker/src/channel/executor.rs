//! Performs the HTTP requests connectors build.

use std::sync::Arc;

use super::sandbox::SandboxGateway;
use crate::plugin::bindings::{HttpRequest, HttpResponse};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExecuteError {
    #[error(
        "{url}: the {scheme} scheme is not supported by this broker (sandbox: is in-process; real HTTP comes with the HTTP executor)"
    )]
    Unsupported { url: String, scheme: String },
    #[error("{url}: host not allowed for plugin {plugin} (allowed: {allowed})")]
    NotAllowed {
        url: String,
        plugin: String,
        allowed: String,
    },
}

/// Where a channel's requests go.
#[derive(Clone)]
pub struct Executor {
    sandbox: Option<Arc<SandboxGateway>>,
    allowed_hosts: Arc<[String]>,
    plugin: Arc<str>,
}

impl Executor {
    pub fn new(
        plugin: &str,
        allowed_hosts: &[String],
        sandbox: Option<Arc<SandboxGateway>>,
    ) -> Self {
        Self {
            sandbox,
            allowed_hosts: allowed_hosts.into(),
            plugin: plugin.into(),
        }
    }

    /// Performs `request` (its answer, and how long to wait before using it).
    pub fn execute(
        &self,
        request: &HttpRequest,
        now_ms: u64,
    ) -> Result<(HttpResponse, u64), ExecuteError> {
        let url = request.url.as_str();
        let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
        let host = rest.split('/').next().unwrap_or("");
        let target = if scheme == "sandbox" {
            format!("sandbox:{host}")
        } else {
            host.to_string()
        };
        if !self.allowed_hosts.contains(&target) {
            return Err(ExecuteError::NotAllowed {
                url: url.to_string(),
                plugin: self.plugin.to_string(),
                allowed: self.allowed_hosts.join(", "),
            });
        }
        match (scheme, &self.sandbox) {
            ("sandbox", Some(gw)) => Ok((gw.handle(request, now_ms), gw.delay_ms())),
            _ => Err(ExecuteError::Unsupported {
                url: url.to_string(),
                scheme: scheme.to_string(),
            }),
        }
    }
}
