//! OpenMRS (FHIR2 module) Patient and Location to contacts and locations.
//! See README.md.

use std::collections::BTreeMap;

use mhero_sdk::fhir::{
    Contact, EntryError, FhirMapper, Location, Mapped, MapperInfo, PluginError, PluginInfo,
    PluginKind, Telecom,
};
use mhero_sdk::host;
use serde_json::Value;

pub struct OpenmrsPatient;

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// A list field that must be an array when present.
fn list<'a>(v: &'a Value, key: &str) -> Result<&'a [Value], String> {
    match v.get(key) {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(_) => Err(format!("`{key}` must be a list")),
    }
}

/// `Organization/1` from a Reference, relative or absolute, without any
/// `_history/<version>` suffix.
fn reference(v: Option<&Value>) -> Option<String> {
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

fn human_name(p: &Value) -> Result<String, String> {
    let names = list(p, "name")?;
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

fn telecoms(p: &Value) -> Result<Vec<Telecom>, String> {
    list(p, "telecom")?
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let value = match t.get("value") {
                Some(Value::String(s)) if !s.trim().is_empty() => s.trim().to_string(),
                Some(Value::String(_)) | None => return None,
                Some(_) => return Some(Err(format!("telecom[{i}].value must be text"))),
            };
            Some(Ok(Telecom {
                // OpenMRS's person-attribute phone has no system.
                system: text(t, "system").unwrap_or("phone").to_string(),
                value,
                use_: text(t, "use").map(str::to_string),
                rank: t.get("rank").and_then(Value::as_u64).map(|r| r as u32),
            }))
        })
        .collect()
}

/// Languages, preferred first (`communication.preferred`).
fn languages(p: &Value) -> Result<Vec<String>, String> {
    let mut out: Vec<(bool, String)> = Vec::new();
    for c in list(p, "communication")? {
        let code = c
            .get("language")
            .and_then(|l| {
                l.get("coding")
                    .and_then(Value::as_array)
                    .and_then(|c| c.first())
                    .and_then(|c| text(c, "code"))
                    .or_else(|| text(l, "text"))
            })
            .map(str::to_string);
        if let Some(code) = code {
            out.push((
                c.get("preferred").and_then(Value::as_bool) == Some(true),
                code,
            ));
        }
    }
    out.sort_by_key(|(preferred, _)| !preferred);
    Ok(out.into_iter().map(|(_, c)| c).collect())
}

fn place(resource: &Value, id: String) -> Result<Location, String> {
    let kind = list(resource, "type")?
        .first()
        .or_else(|| resource.get("physicalType"))
        .and_then(|t| {
            t.get("coding")
                .and_then(Value::as_array)
                .and_then(|c| c.first())
                .and_then(|c| text(c, "code"))
                .or_else(|| text(t, "text"))
        })
        .map(str::to_string);
    Ok(Location {
        source_id: id,
        name: text(resource, "name").unwrap_or("").to_string(),
        parent: reference(resource.get("partOf")),
        kind,
    })
}

fn patient(p: &Value, id: String, role: &str) -> Result<Contact, String> {
    let deceased = p.get("deceasedBoolean").and_then(Value::as_bool) == Some(true)
        || p.get("deceasedDateTime").is_some_and(|v| !v.is_null());
    let mut organizations: Vec<String> = Vec::new();
    for r in std::iter::once(p.get("managingOrganization"))
        .chain(list(p, "generalPractitioner")?.iter().map(Some))
        .filter_map(reference)
    {
        if r.starts_with("Organization/") && !organizations.contains(&r) {
            organizations.push(r);
        }
    }
    Ok(Contact {
        source_id: id,
        name: human_name(p)?,
        telecoms: telecoms(p)?,
        languages: languages(p)?,
        roles: if role.is_empty() {
            Vec::new()
        } else {
            vec![role.to_string()]
        },
        facilities: Vec::new(),
        organizations,
        location_ancestry: Vec::new(),
        active: p.get("active").and_then(Value::as_bool).unwrap_or(true) && !deceased,
    })
}

fn entries(doc: &Value) -> Result<Vec<&Value>, PluginError> {
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

impl FhirMapper for OpenmrsPatient {
    fn describe() -> MapperInfo {
        MapperInfo {
            plugin: PluginInfo {
                name: "openmrs-patient".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::FhirMapper,
                summary: "OpenMRS (FHIR2 module) Patient to contacts: clients reached with appointment and adherence reminders".into(),
            },
            resource_types: ["Patient", "Location"].map(String::from).to_vec(),
        }
    }

    fn map_resources(json: String) -> Result<Mapped, PluginError> {
        let doc: Value = serde_json::from_str(&json)
            .map_err(|e| PluginError::invalid(format!("not JSON: {e}")))?;
        let role = host::config("role").unwrap_or_else(|| "client".into());
        let role = role.trim();
        let mut errors = Vec::new();
        let mut contacts = Vec::new();
        let mut places: BTreeMap<String, Location> = BTreeMap::new();
        for (index, resource) in entries(&doc)?.into_iter().enumerate() {
            let kind = text(resource, "resourceType");
            let qualified = match (kind, text(resource, "id")) {
                (Some(k), Some(i)) => Some(format!("{k}/{i}")),
                _ => None,
            };
            let mut fail = |message: String| {
                errors.push(EntryError {
                    index: index as u32,
                    resource: qualified.clone(),
                    message,
                })
            };
            let Some(kind) = kind else {
                fail("entry has no resource or no resourceType".into());
                continue;
            };
            if !["Patient", "Location"].contains(&kind) {
                continue;
            }
            let Some(id) = qualified.clone() else {
                fail(format!("{kind} has no id"));
                continue;
            };
            let mapped = match kind {
                "Patient" => patient(resource, id, role).map(|c| contacts.push(c)),
                _ => place(resource, id.clone()).map(|l| {
                    places.insert(id, l);
                }),
            };
            if let Err(e) = mapped {
                fail(e);
            }
        }
        Ok(Mapped {
            contacts,
            locations: places.into_values().collect(),
            groups: Vec::new(),
            errors,
        })
    }
}

mhero_sdk::export_fhir_mapper!(OpenmrsPatient);

#[cfg(test)]
mod tests;
