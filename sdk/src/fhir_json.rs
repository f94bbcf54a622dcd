//! Reading FHIR R4 JSON the way mappers need it (feature `fhir-mapper`):
//! references, lists that must be lists, human names, contact points,
//! codeable concepts, Bundle entries. Each returns what a lenient reader
//! would, and an error text where the document is malformed, so a mapper
//! reports the entry and maps the rest.

use serde_json::Value;

use super::{PluginError, Telecom};

/// A text field.
pub fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A list field that must be an array when present (absent or null: empty).
pub fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("`{key}` must be a list")),
    }
}

/// `Practitioner/1` from a Reference, relative or absolute, without any
/// `_history/<version>` suffix.
pub fn reference(v: Option<&Value>) -> Option<String> {
    let r = v?.get("reference")?.as_str()?;
    let parts: Vec<&str> = r.trim_end_matches('/').split('/').collect();
    let parts = match parts.iter().position(|p| *p == "_history") {
        Some(i) => &parts[..i],
        None => &parts[..],
    };
    match parts {
        [.., kind, id] if !kind.is_empty() && !id.is_empty() => Some(format!("{kind}/{id}")),
        _ => None,
    }
}

/// A CodeableConcept's first code and its display (or its text).
pub fn codeable(v: &Value) -> Option<(String, String)> {
    let coding = v
        .get("coding")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let code = coding
        .and_then(|c| text(c, "code"))
        .or_else(|| text(v, "text"))?;
    let display = coding
        .and_then(|c| text(c, "display"))
        .or_else(|| text(v, "text"))
        .unwrap_or(code);
    Some((code.to_string(), display.to_string()))
}

/// The official name, else the usual one, else the first: its `text`, else
/// prefix + given + family.
pub fn human_name(resource: &Value) -> Result<String, String> {
    let names = list(resource, "name")?;
    let pick = ["official", "usual"]
        .iter()
        .find_map(|u| names.iter().find(|n| text(n, "use") == Some(u)))
        .or_else(|| names.first());
    let Some(name) = pick else {
        return Ok(String::new());
    };
    if let Some(t) = text(name, "text") {
        return Ok(t.trim().to_string());
    }
    let mut parts: Vec<&str> = list(name, "prefix")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    parts.extend(list(name, "given")?.iter().filter_map(Value::as_str));
    if let Some(family) = text(name, "family") {
        parts.push(family);
    }
    Ok(parts.join(" "))
}

/// The contact points with a value (blank ones are skipped); a telecom
/// without `system` is read as `system_default`.
pub fn telecoms(resource: &Value, system_default: &str) -> Result<Vec<Telecom>, String> {
    list(resource, "telecom")?
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let value = match t.get("value") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                Some(Value::String(_)) | None => return None,
                Some(_) => return Some(Err(format!("telecom[{i}].value must be text"))),
            };
            Some(Ok(Telecom {
                system: text(t, "system").unwrap_or(system_default).to_string(),
                value,
                use_: text(t, "use").map(str::to_string),
                rank: t.get("rank").and_then(Value::as_u64).map(|r| r as u32),
            }))
        })
        .collect()
}

/// The resources of a document: a Bundle's entries (an entry without a
/// resource is `null`), or the document itself.
pub fn entries(doc: &Value) -> Result<Vec<&Value>, PluginError> {
    match text(doc, "resourceType") {
        Some("Bundle") => match doc.get("entry") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(entries)) => Ok(entries
                .iter()
                .map(|e| e.get("resource").unwrap_or(&Value::Null))
                .collect()),
            Some(_) => Err(PluginError::invalid("Bundle.entry must be a list")),
        },
        Some(_) => Ok(vec![doc]),
        None => Err(PluginError::invalid("not a FHIR resource: no resourceType")),
    }
}
