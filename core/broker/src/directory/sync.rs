//! FHIR documents into the directory: one document (a resource or a
//! Bundle) through a mapper plugin, a file or a folder of them
//! (`mhero import`), and FHIR R4 servers synced on a schedule.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::Directory;
use super::import::{
    EntryProblem, ImportReport, Incoming, IncomingContact, IncomingGroup, IncomingPlace, Telecom,
};
use crate::error::{Error, Result};
use crate::plugin::Plugin;
use crate::plugin::bindings::fhir_types::Mapped;

/// Largest FHIR document read (bytes): a page of a sync, or one file of an
/// import.
pub const MAX_DOCUMENT_BYTES: usize = 64 << 20;

/// What the host reads of a document itself: each resource's version and
/// update time, deletions, and the newest `lastUpdated`.
#[derive(Debug, Default)]
pub struct Envelope {
    /// `Practitioner/1` → (versionId, lastUpdated).
    pub meta: std::collections::HashMap<String, (Option<String>, Option<String>)>,
    /// Resources the document deletes (a transaction's `DELETE`, a history
    /// entry without a resource).
    pub deleted: Vec<String>,
    /// The newest `meta.lastUpdated` in it.
    pub newest: Option<String>,
    /// `Bundle.link[next]`.
    pub next: Option<String>,
}

fn resource_ref(r: &Value) -> Option<String> {
    Some(format!(
        "{}/{}",
        r.get("resourceType")?.as_str()?,
        r.get("id")?.as_str()?
    ))
}

/// `Practitioner/1` from an entry's request URL or full URL.
pub(crate) fn url_ref(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
    let parts = match parts.iter().position(|p| *p == "_history") {
        Some(i) => &parts[..i],
        None => &parts[..],
    };
    match parts {
        [.., kind, id] if !kind.is_empty() && !id.is_empty() => Some(format!("{kind}/{id}")),
        _ => None,
    }
}

/// What a Bundle entry says of its resource.
pub(crate) enum EntryState<'a> {
    /// The resource, and its `Type/id` when it has both.
    Present(&'a Value, Option<String>),
    /// Deleted: a `DELETE` request, or a `410` response without a resource.
    Deleted(String),
    /// Neither (an entry naming nothing usable).
    Unknown,
}

pub(crate) fn entry_state(e: &Value) -> EntryState<'_> {
    let method = e
        .get("request")
        .and_then(|r| r.get("method"))
        .and_then(Value::as_str);
    match e.get("resource") {
        Some(r) if method != Some("DELETE") => EntryState::Present(r, resource_ref(r)),
        _ => {
            let gone = method == Some("DELETE")
                || e.get("response")
                    .and_then(|r| r.get("status"))
                    .and_then(Value::as_str)
                    .is_some_and(|s| s.starts_with("410"));
            let url = e
                .get("request")
                .and_then(|r| r.get("url"))
                .or_else(|| e.get("fullUrl"))
                .and_then(Value::as_str);
            match url.and_then(url_ref) {
                Some(r) if gone => EntryState::Deleted(r),
                _ => EntryState::Unknown,
            }
        }
    }
}

/// Reads a document's envelope; `Err` when it is not FHIR JSON at all.
pub fn envelope(json: &str) -> std::result::Result<Envelope, String> {
    let doc: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let mut env = Envelope::default();
    let see = |r: &Value, env: &mut Envelope| {
        let Some(id) = resource_ref(r) else { return };
        let meta = r.get("meta");
        let version = meta
            .and_then(|m| m.get("versionId"))
            .and_then(Value::as_str)
            .map(str::to_string);
        let updated = meta
            .and_then(|m| m.get("lastUpdated"))
            .and_then(Value::as_str)
            .map(str::to_string);
        if let Some(u) = &updated
            && env.newest.as_ref().is_none_or(|n| newer(u, n))
        {
            env.newest = Some(u.clone());
        }
        env.meta.insert(id, (version, updated));
    };
    match doc.get("resourceType").and_then(Value::as_str) {
        Some("Bundle") => {
            if let Some(links) = doc.get("link").and_then(Value::as_array) {
                env.next = links
                    .iter()
                    .find(|l| l.get("relation").and_then(Value::as_str) == Some("next"))
                    .and_then(|l| l.get("url"))
                    .and_then(Value::as_str)
                    .map(str::to_string);
            }
            for e in doc
                .get("entry")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                match entry_state(e) {
                    EntryState::Present(r, _) => see(r, &mut env),
                    EntryState::Deleted(r) => env.deleted.push(r),
                    EntryState::Unknown => {}
                }
            }
        }
        Some(_) => see(&doc, &mut env),
        None => return Err("not a FHIR resource: no resourceType".into()),
    }
    Ok(env)
}

/// FHIR instants compare as times; same-format strings compare as text.
pub(crate) fn newer(a: &str, b: &str) -> bool {
    match (parse_instant(a), parse_instant(b)) {
        (Some(x), Some(y)) => x > y,
        _ => a > b,
    }
}

/// Milliseconds since the epoch of a FHIR `instant`
/// (`2024-05-01T10:00:00.123+02:00`).
pub(crate) fn parse_instant(s: &str) -> Option<i64> {
    let (date, rest) = s.split_once('T')?;
    let mut d = date.split('-');
    let (y, m, day): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let (time, offset) = match rest.find(['Z', '+', '-']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "Z"),
    };
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next().unwrap_or("0").parse().ok()?;
    let off_min = if offset == "Z" {
        0
    } else {
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (oh, om) = offset[1..].split_once(':')?;
        sign * (oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?)
    };
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(
        ((days * 86_400 + hh * 3600 + mm * 60 - off_min * 60) as f64 * 1000.0 + sec * 1000.0)
            as i64,
    )
}

/// A mapper's output in the directory's terms, with the envelope's meta.
pub fn incoming(mapped: Mapped, env: &Envelope) -> Incoming {
    let meta = |id: &str| env.meta.get(id).cloned().unwrap_or_default();
    Incoming {
        contacts: mapped
            .contacts
            .into_iter()
            .map(|c| {
                let (version_id, last_updated) = meta(&c.source_id);
                IncomingContact {
                    resource: c.source_id,
                    name: c.name,
                    telecoms: c
                        .telecoms
                        .into_iter()
                        .map(|t| Telecom {
                            system: t.system,
                            value: t.value,
                            use_: t.use_,
                            rank: t.rank,
                        })
                        .collect(),
                    languages: c.languages,
                    roles: c.roles,
                    facilities: c.facilities,
                    organizations: c.organizations,
                    ancestry: c.location_ancestry,
                    active: c.active,
                    version_id,
                    last_updated,
                }
            })
            .collect(),
        places: mapped
            .locations
            .into_iter()
            .map(|l| IncomingPlace {
                id: l.source_id,
                name: l.name,
                parent: l.parent,
                kind: l.kind,
            })
            .collect(),
        groups: mapped
            .groups
            .into_iter()
            .map(|g| IncomingGroup {
                id: g.source_id,
                name: g.name,
                members: g.members,
            })
            .collect(),
        errors: mapped
            .errors
            .into_iter()
            .map(|e| EntryProblem {
                index: Some(e.index),
                resource: e.resource,
                message: e.message,
            })
            .collect(),
    }
}

/// One FHIR document through `mapper` into the directory. Blocks (a plugin
/// call and a store commit): call it off the async runtime.
pub fn import_document(
    dir: &Directory,
    mapper: &Plugin,
    source: &str,
    country: &str,
    json: &str,
) -> Result<(ImportReport, Envelope)> {
    let (incoming, env) = map_document(mapper, json)?;
    let report = apply(dir, source, country, incoming, &env)?;
    Ok((report, env))
}

/// A document read by the host (its envelope) and mapped by the plugin;
/// nothing written. `Error::Invalid` when it is not FHIR JSON.
pub fn map_document(mapper: &Plugin, json: &str) -> Result<(Incoming, Envelope)> {
    if json.len() > MAX_DOCUMENT_BYTES {
        return Err(Error::Invalid(format!(
            "the document is {} bytes; at most {MAX_DOCUMENT_BYTES}",
            json.len()
        )));
    }
    let env = envelope(json).map_err(Error::Invalid)?;
    let mapped = mapper
        .map_resources(json)
        .map_err(|e| Error::Invalid(format!("mapper {}: {e}", mapper.name())))?;
    Ok((incoming(mapped, &env), env))
}

/// Writes a mapped document into the directory, and removes what it
/// deletes.
pub fn apply(
    dir: &Directory,
    source: &str,
    country: &str,
    incoming: Incoming,
    env: &Envelope,
) -> Result<ImportReport> {
    let mut report = dir.import(source, country, incoming)?;
    if !env.deleted.is_empty() {
        report.absorb(dir.remove(source, &env.deleted)?);
    }
    Ok(report)
}

/// Imports documents in order, two stages at once: the next document is
/// read and mapped (host parse, plugin call) on a thread of its own while
/// the one before is written into the directory. `docs` yields a label
/// and the text (or why it could not be read); a document that cannot be
/// read or is not FHIR is reported under its label and the rest are
/// imported. `progress` gets each label and its report.
pub fn import_documents<I>(
    dir: &Directory,
    mapper: &Plugin,
    source: &str,
    country: &str,
    docs: I,
    mut progress: impl FnMut(&str, &ImportReport),
) -> Result<ImportReport>
where
    I: IntoIterator<Item = (String, std::result::Result<String, String>)>,
    I::IntoIter: Send,
{
    let refused = |label: String, message: String| ImportReport {
        problems: vec![EntryProblem {
            index: None,
            resource: Some(label),
            message,
        }],
        ..Default::default()
    };
    let docs = docs.into_iter();
    std::thread::scope(|scope| {
        // Two mapped documents wait at most: memory stays bounded.
        let (tx, rx) = std::sync::mpsc::sync_channel(2);
        scope.spawn(move || {
            for (label, text) in docs {
                let mapped = text.map(|json| map_document(mapper, &json));
                if tx.send((label, mapped)).is_err() {
                    return;
                }
            }
        });
        let mut total = ImportReport::default();
        for (label, mapped) in rx {
            let report = match mapped {
                Ok(Ok((incoming, env))) => apply(dir, source, country, incoming, &env)?,
                Ok(Err(Error::Invalid(message))) => refused(label.clone(), message),
                Ok(Err(e)) => return Err(e),
                Err(message) => refused(label.clone(), message),
            };
            progress(&label, &report);
            total.absorb(report);
        }
        Ok(total)
    })
}

/// The files an import reads: `path` itself, or the `.json` files of a
/// folder in name order.
pub fn documents(path: &Path) -> Result<Vec<PathBuf>> {
    let io = |source| Error::Io {
        path: path.to_owned(),
        source,
    };
    if !path.is_dir() {
        std::fs::metadata(path).map_err(io)?;
        return Ok(vec![path.to_owned()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(io)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .is_some_and(|x| x.eq_ignore_ascii_case("json"))
                && p.is_file()
        })
        .collect();
    files.sort();
    Ok(files)
}

/// Imports a file or a folder of FHIR JSON documents (see
/// [`import_documents`]); `progress` gets each file and its report.
pub fn import_path(
    dir: &Directory,
    mapper: &Plugin,
    source: &str,
    country: &str,
    path: &Path,
    mut progress: impl FnMut(&Path, &ImportReport),
) -> Result<ImportReport> {
    let files = documents(path)?;
    let docs = files.iter().map(|f| {
        (
            f.display().to_string(),
            std::fs::read_to_string(f).map_err(|e| format!("unreadable: {e}")),
        )
    });
    import_documents(dir, mapper, source, country, docs, |label, r| {
        progress(Path::new(label), r)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_are_read_as_type_and_id_however_written() {
        for written in [
            "Location/VF1",
            "https://hris.example.org/fhir/Location/VF1",
            "Location/VF1/_history/3",
            "https://hris.example.org/fhir/Location/VF1/_history/3",
            "Location/VF1/",
            "Location/VF1?_format=json",
        ] {
            assert_eq!(
                url_ref(written).as_deref(),
                Some("Location/VF1"),
                "{written}"
            );
        }
        for not in ["VF1", "Location/", ""] {
            assert_eq!(url_ref(not), None, "{not}");
        }
    }

    #[test]
    fn instants_compare_as_times() {
        assert!(newer("2024-05-01T10:00:00Z", "2024-05-01T09:59:59.999Z"));
        assert!(!newer("2024-05-01T10:00:00+02:00", "2024-05-01T09:00:00Z"));
        assert_eq!(parse_instant("1970-01-01T00:00:01.500Z"), Some(1500));
        assert_eq!(parse_instant("2000-03-01T00:00:00Z"), Some(951_868_800_000));
    }

    #[test]
    fn the_envelope_has_versions_deletions_and_the_next_page() {
        let doc = r#"{"resourceType":"Bundle","type":"history",
          "link":[{"relation":"self","url":"a"},{"relation":"next","url":"http://x/fhir?page=2"}],
          "entry":[
            {"resource":{"resourceType":"Practitioner","id":"1","meta":{"versionId":"3","lastUpdated":"2024-05-01T10:00:00Z"}}},
            {"request":{"method":"DELETE","url":"Practitioner/2"}},
            {"fullUrl":"http://x/fhir/Practitioner/3/_history/2","response":{"status":"410 Gone"}}
          ]}"#;
        let env = envelope(doc).unwrap();
        assert_eq!(env.next.as_deref(), Some("http://x/fhir?page=2"));
        assert_eq!(env.deleted, vec!["Practitioner/2", "Practitioner/3"]);
        assert_eq!(
            env.meta["Practitioner/1"],
            (Some("3".into()), Some("2024-05-01T10:00:00Z".into()))
        );
        assert_eq!(env.newest.as_deref(), Some("2024-05-01T10:00:00Z"));
        assert!(envelope("[1]").unwrap_err().contains("resourceType"));
        assert!(envelope("{").unwrap_err().contains("not JSON"));
    }
}
