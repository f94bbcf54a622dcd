//! A small client of the broker's HTTP API, for the commands that talk to
//! a running server (`mhero send`, `mhero status <campaign> --server`) and
//! for `mhero demo`, which drives its own server through it.

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The server's address and a token.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl ApiClient {
    /// `base`: `http://127.0.0.1:8080`.
    pub fn new(base: &str, token: &str) -> Result<Self> {
        let http = reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(5))
            .timeout(std::time::Duration::from_secs(120))
            .build()
            .context("making the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.to_string(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.call(self.http.get(format!("{}{path}", self.base)), path)
            .await
    }

    pub async fn post(&self, path: &str, body: &Value, content_type: &str) -> Result<Value> {
        let request = self
            .http
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(serde_json::to_vec(body)?);
        self.call(request, path).await
    }

    async fn call(&self, request: reqwest::RequestBuilder, path: &str) -> Result<Value> {
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("calling {}{path}", self.base))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {path}"))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if !status.is_success() {
            // The API's error, or a FHIR OperationOutcome's diagnostics.
            let reason = value["error"]["message"]
                .as_str()
                .or_else(|| value["issue"][0]["diagnostics"].as_str())
                .map_or_else(
                    || String::from_utf8_lossy(&bytes).into_owned(),
                    str::to_string,
                );
            bail!("{path}: {status}: {reason}");
        }
        Ok(value)
    }
}
