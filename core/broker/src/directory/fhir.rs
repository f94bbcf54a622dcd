//! Syncing the directory from a FHIR R4 server.
//!
//! A pass reads each configured resource type in order, a page at a time
//! (`_count`, then `Bundle.link[next]`), sorted by `_lastUpdated`; an
//! incremental pass asks only for what changed since the last completed
//! one (`_lastUpdated=gt<mark>`). Each page goes through the source's
//! mapper plugin into the directory, and the pass's progress (the resource
//! type, and the newest `lastUpdated` of that type imported) is committed
//! with it: a broker killed mid-sync resumes at that type from that time
//! (`_lastUpdated=ge…`; what it reads twice is unchanged, and nothing is
//! duplicated, since a resource is one contact per source).
//!
//! Deletions come from the type's history (`_history?_since=<mark>`: the
//! newest entry of each resource decides) where the server has one;
//! otherwise a full pass every `reconcile_every_s` removes what the server
//! no longer lists. A full pass that was interrupted removes nothing (what
//! it saw before the crash is not known); the next one does.
//!
//! Requests that fail with a server error, 429 or a network error are
//! retried with backoff; credentials go only to the configured server's
//! origin (a `next` link elsewhere is refused).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::SourceConfig;
use super::import::ImportReport;
use super::sync::{EntryState, Envelope, MAX_DOCUMENT_BYTES, import_document, newer};
use super::{Directory, mark_key};
use crate::error::{Error, Result};
use crate::plugin::Plugin;
use crate::store::{Batch, Cf};

/// A source's progress, kept in the store.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SyncMark {
    /// The newest `lastUpdated` a completed pass imported.
    pub since: Option<String>,
    /// The pass under way, if one was interrupted.
    pub pass: Option<Pass>,
    /// When the last full pass completed (ms since the epoch).
    pub last_full_ms: Option<u64>,
    /// Whether the server answers type history (learned on first try).
    pub history: Option<bool>,
}

impl crate::store::Versioned for SyncMark {
    const VERSION: u8 = 1;
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Pass {
    pub full: bool,
    /// Resumed after an interruption.
    pub resumed: bool,
    /// The resource type being read (index into `resource_types`).
    pub type_index: u32,
    /// The newest `lastUpdated` of that type imported so far.
    pub resume_from: Option<String>,
    /// The newest `lastUpdated` of the pass so far.
    pub newest: Option<String>,
}

/// What a sync did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct SyncReport {
    pub source: String,
    pub full: bool,
    pub resumed: bool,
    pub pages: u64,
    pub requests_retried: u64,
    pub import: ImportReport,
    /// The mark the next incremental pass starts from.
    pub since: Option<String>,
    /// Whether deletions came from history (else: reconcile).
    pub history: Option<bool>,
}

/// Progress, for a progress bar.
#[derive(Clone, Debug)]
pub struct SyncEvent<'a> {
    pub resource_type: &'a str,
    pub pages: u64,
    pub contacts: u64,
}

/// Syncs one FHIR source.
pub struct Syncer {
    pub name: String,
    pub config: SourceConfig,
    pub country: String,
    dir: Arc<Directory>,
    mapper: Arc<Plugin>,
    client: reqwest::Client,
    origin: String,
}

fn origin(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host = rest.split('/').next().unwrap_or(rest);
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    format!("{scheme}://{host}/")
}

fn max_time(a: &mut Option<String>, b: Option<&String>) {
    if let Some(b) = b
        && a.as_ref().is_none_or(|a| newer(b, a))
    {
        *a = Some(b.clone());
    }
}

/// Resources a history page deletes: for each resource, its first (newest)
/// entry decides; `decided` carries over to later (older) pages.
pub fn history_deletions(json: &str, decided: &mut HashSet<String>) -> Result<Vec<String>> {
    let doc: Value = serde_json::from_str(json)
        .map_err(|e| Error::Invalid(format!("the history is not JSON: {e}")))?;
    let mut out = Vec::new();
    for e in doc
        .get("entry")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match super::sync::entry_state(e) {
            EntryState::Present(_, Some(r)) => {
                decided.insert(r);
            }
            EntryState::Deleted(r) => {
                if decided.insert(r.clone()) {
                    out.push(r);
                }
            }
            EntryState::Present(_, None) | EntryState::Unknown => {}
        }
    }
    Ok(out)
}

enum Fetched {
    Body(String),
    /// A 4xx other than 429: what the server said.
    Refused(u16, String),
}

impl Syncer {
    pub fn new(
        name: &str,
        config: SourceConfig,
        default_country: &str,
        dir: Arc<Directory>,
        mapper: Arc<Plugin>,
    ) -> Result<Self> {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_s))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Internal(format!("HTTP client: {e}")))?;
        Ok(Self {
            name: name.to_string(),
            country: config
                .country
                .clone()
                .unwrap_or_else(|| default_country.to_string()),
            origin: origin(&config.base_url),
            config,
            dir,
            mapper,
            client,
        })
    }

    fn upstream(&self, message: String) -> Error {
        Error::Upstream {
            system: format!("FHIR source {}", self.name),
            message,
        }
    }

    pub fn mark(&self) -> Result<SyncMark> {
        match self
            .dir
            .engine()
            .get(Cf::Directory, &mark_key(&self.name))?
        {
            Some(v) => crate::store::decode_value(&v).map_err(|m| Error::BadRecord {
                cf: "directory",
                key: format!("sync mark {}", self.name),
                message: m,
            }),
            None => Ok(SyncMark::default()),
        }
    }

    fn save(&self, mark: &SyncMark) -> Result<()> {
        let mut b = Batch::new();
        b.put(
            Cf::Directory,
            mark_key(&self.name),
            crate::store::encode(mark),
        );
        Ok(self.dir.engine().write(b)?)
    }

    /// One GET with retries.
    async fn fetch(&self, url: &str, retried: &mut u64) -> Result<Fetched> {
        if !url.starts_with(&self.origin) {
            return Err(self.upstream(format!(
                "refusing to follow {url}: it leaves {}",
                self.origin
            )));
        }
        let mut attempt = 0u32;
        loop {
            let mut req = self
                .client
                .get(url)
                .header(reqwest::header::ACCEPT, "application/fhir+json");
            if let Some(auth) = &self.config.auth {
                req = auth.apply(req);
            }
            let (why, wait) = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    let retry_after = resp
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(|s| Duration::from_secs(s.min(60)));
                    if status.is_success() || (status.is_client_error() && status.as_u16() != 429) {
                        let body = read_limited(resp, MAX_DOCUMENT_BYTES)
                            .await
                            .map_err(|e| self.upstream(format!("GET {url}: {e}")))?;
                        return Ok(if status.is_success() {
                            Fetched::Body(body)
                        } else {
                            Fetched::Refused(status.as_u16(), diagnostics(&body))
                        });
                    }
                    (format!("{status}"), retry_after)
                }
                Err(e) => (format!("{e}"), None),
            };
            if attempt >= self.config.max_retries {
                return Err(self.upstream(format!(
                    "GET {url} failed {} times; last: {why}",
                    attempt + 1
                )));
            }
            let backoff = wait.unwrap_or(Duration::from_millis(500u64 << attempt.min(7)));
            tracing::warn!(source = %self.name, %url, error = %why, retry_in_ms = backoff.as_millis() as u64, "FHIR request failed; retrying.");
            attempt += 1;
            *retried += 1;
            tokio::time::sleep(backoff).await;
        }
    }

    fn search_url(&self, resource_type: &str, pass: &Pass, since: Option<&String>) -> String {
        let base = self.config.base_url.trim_end_matches('/');
        let mut url = format!(
            "{base}/{resource_type}?_count={}&_sort=_lastUpdated",
            self.config.page_size
        );
        if let Some(includes) = self.config.revinclude.get(resource_type) {
            for inc in includes {
                url.push_str("&_revinclude=");
                url.push_str(inc);
            }
        }
        match (&pass.resume_from, since, pass.full) {
            // Resuming: from the newest imported, again (read twice is
            // unchanged; equal times across a page boundary are not lost).
            (Some(t), _, _) => url.push_str(&format!("&_lastUpdated=ge{}", encode_time(t))),
            (None, Some(t), false) => url.push_str(&format!("&_lastUpdated=gt{}", encode_time(t))),
            _ => {}
        }
        url
    }

    /// Runs one pass (resuming an interrupted one first). `now_ms` decides
    /// whether a full reconcile is due.
    pub async fn sync(
        &self,
        now_ms: u64,
        progress: &(dyn Fn(&SyncEvent<'_>) + Send + Sync),
    ) -> Result<SyncReport> {
        let mut mark = self.mark()?;
        let mut pass = match mark.pass.take() {
            Some(mut p) => {
                p.resumed = true;
                p
            }
            None => Pass {
                full: mark.since.is_none()
                    || mark.last_full_ms.is_none_or(|t| {
                        now_ms.saturating_sub(t) >= self.config.reconcile_every_s * 1000
                    }),
                ..Pass::default()
            },
        };
        let mut report = SyncReport {
            source: self.name.clone(),
            full: pass.full,
            resumed: pass.resumed,
            ..SyncReport::default()
        };
        let mut seen: HashSet<String> = HashSet::new();
        let types = self.config.resource_types.clone();
        while (pass.type_index as usize) < types.len() {
            let t = &types[pass.type_index as usize];
            let mut url = self.search_url(t, &pass, mark.since.as_ref());
            loop {
                let body = match self.fetch(&url, &mut report.requests_retried).await? {
                    Fetched::Body(b) => b,
                    Fetched::Refused(status, why) => {
                        return Err(self.upstream(format!("GET {url}: {status}: {why}")));
                    }
                };
                let (page, env) = self.import(body).await?;
                report.pages += 1;
                report.import.absorb(page);
                if pass.full {
                    seen.extend(env.meta.keys().cloned());
                }
                let prefix = format!("{t}/");
                let newest_of_type = env
                    .meta
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .filter_map(|(_, (_, u))| u.as_ref())
                    .fold(None, |acc: Option<String>, u| match acc {
                        Some(a) if !newer(u, &a) => Some(a),
                        _ => Some(u.clone()),
                    });
                max_time(&mut pass.resume_from, newest_of_type.as_ref());
                max_time(&mut pass.newest, env.newest.as_ref());
                mark.pass = Some(pass.clone());
                self.save(&mark)?;
                progress(&SyncEvent {
                    resource_type: t,
                    pages: report.pages,
                    contacts: report.import.contacts(),
                });
                match env.next {
                    Some(next) => url = next,
                    None => break,
                }
            }
            pass.type_index += 1;
            pass.resume_from = None;
            mark.pass = Some(pass.clone());
            self.save(&mark)?;
        }

        // Deletions.
        if !pass.full
            && let Some(since) = mark.since.clone()
            && mark.history != Some(false)
        {
            match self.deletions(&since, &mut report).await? {
                Some(gone) => {
                    mark.history = Some(true);
                    if !gone.is_empty() {
                        report.import.absorb(self.remove(gone).await?);
                    }
                }
                None => mark.history = Some(false),
            }
        }
        if pass.full && !pass.resumed {
            let known = {
                let dir = Arc::clone(&self.dir);
                let name = self.name.clone();
                tokio::task::spawn_blocking(move || dir.resources_of(&name))
                    .await
                    .map_err(|e| Error::Internal(e.to_string()))??
            };
            let gone: Vec<String> = known.into_iter().filter(|r| !seen.contains(r)).collect();
            if !gone.is_empty() {
                report.import.absorb(self.remove(gone).await?);
            }
        }
        max_time(&mut mark.since, pass.newest.as_ref());
        if pass.full {
            mark.last_full_ms = Some(now_ms);
        }
        mark.pass = None;
        self.save(&mark)?;
        report.since = mark.since.clone();
        report.history = mark.history;
        Ok(report)
    }

    async fn import(&self, body: String) -> Result<(ImportReport, Envelope)> {
        let dir = Arc::clone(&self.dir);
        let mapper = Arc::clone(&self.mapper);
        let (name, country) = (self.name.clone(), self.country.clone());
        tokio::task::spawn_blocking(move || import_document(&dir, &mapper, &name, &country, &body))
            .await
            .map_err(|e| Error::Internal(format!("import task: {e}")))?
    }

    async fn remove(&self, gone: Vec<String>) -> Result<ImportReport> {
        let dir = Arc::clone(&self.dir);
        let name = self.name.clone();
        tokio::task::spawn_blocking(move || dir.remove(&name, &gone))
            .await
            .map_err(|e| Error::Internal(format!("removal task: {e}")))?
    }

    /// Resources deleted since `since`, from each type's history; `None`
    /// when the server has no history to give.
    async fn deletions(&self, since: &str, report: &mut SyncReport) -> Result<Option<Vec<String>>> {
        let base = self.config.base_url.trim_end_matches('/');
        let mut gone = Vec::new();
        for t in &self.config.resource_types {
            let mut url = format!(
                "{base}/{t}/_history?_since={}&_count={}",
                encode_time(since),
                self.config.page_size
            );
            let mut decided = HashSet::new();
            loop {
                let body = match self.fetch(&url, &mut report.requests_retried).await? {
                    Fetched::Body(b) => b,
                    Fetched::Refused(status, why) => {
                        tracing::info!(source = %self.name, status, reason = %why, "The server has no history; deletions come from full reconciles.");
                        return Ok(None);
                    }
                };
                gone.extend(history_deletions(&body, &mut decided)?);
                let next = super::sync::envelope(&body).ok().and_then(|e| e.next);
                match next {
                    Some(n) => url = n,
                    None => break,
                }
            }
        }
        Ok(Some(gone))
    }
}

/// `+` in an instant's offset is a space in a query string.
fn encode_time(t: &str) -> String {
    t.replace('+', "%2B").replace(':', "%3A")
}

/// The text of an OperationOutcome's issues, or the body's start.
fn diagnostics(body: &str) -> String {
    let mut text = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| {
            let issues = v.get("issue")?.as_array()?;
            Some(
                issues
                    .iter()
                    .filter_map(|i| {
                        i.get("diagnostics")
                            .or_else(|| i.get("details").and_then(|d| d.get("text")))
                            .and_then(Value::as_str)
                    })
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| body.chars().take(200).collect());
    crate::plugin::truncate(&mut text, 500);
    text
}

/// A response body of at most `limit` bytes, as text.
pub(crate) async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
) -> std::result::Result<String, String> {
    if resp.content_length().is_some_and(|n| n as usize > limit) {
        return Err(format!("the response is over {limit} bytes"));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| e.to_string())? {
        if out.len() + chunk.len() > limit {
            return Err(format!("the response is over {limit} bytes"));
        }
        out.extend_from_slice(&chunk);
    }
    String::from_utf8(out).map_err(|_| "the response is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_history_entry_of_a_resource_decides() {
        let page1 = r#"{"resourceType":"Bundle","type":"history","entry":[
          {"resource":{"resourceType":"Practitioner","id":"1"},"request":{"method":"PUT","url":"Practitioner/1"}},
          {"request":{"method":"DELETE","url":"Practitioner/2"}},
          {"fullUrl":"http://x/fhir/Practitioner/3","response":{"status":"410 Gone"}}
        ]}"#;
        let page2 = r#"{"resourceType":"Bundle","type":"history","entry":[
          {"request":{"method":"DELETE","url":"Practitioner/1"}},
          {"resource":{"resourceType":"Practitioner","id":"4"},"request":{"method":"POST","url":"Practitioner"}}
        ]}"#;
        let mut decided = HashSet::new();
        assert_eq!(
            history_deletions(page1, &mut decided).unwrap(),
            vec!["Practitioner/2", "Practitioner/3"]
        );
        assert!(
            history_deletions(page2, &mut decided).unwrap().is_empty(),
            "deleted, then created again: it stays"
        );
    }

    #[test]
    fn links_may_not_leave_the_server() {
        assert_eq!(
            origin("https://ihris.example.org/fhir"),
            "https://ihris.example.org/"
        );
        assert_eq!(
            origin("http://127.0.0.1:8080/fhir/"),
            "http://127.0.0.1:8080/"
        );
    }
}
