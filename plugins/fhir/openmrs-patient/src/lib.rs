//! OpenMRS (FHIR2 module) Patient and Location to contacts and locations.
//! See README.md.

use std::collections::BTreeMap;

use mhero_sdk::fhir::json::{entries, human_name, list, reference, telecoms, text};
use mhero_sdk::fhir::{
    Contact, EntryError, FhirMapper, Location, Mapped, MapperInfo, PluginError, PluginInfo,
    PluginKind,
};
use mhero_sdk::host;
use serde_json::Value;

pub struct OpenmrsPatient;

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
        // OpenMRS's person-attribute phone has no system.
        telecoms: telecoms(p, "phone")?,
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
