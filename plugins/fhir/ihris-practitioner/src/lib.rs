//! iHRIS Practitioner / PractitionerRole / Location / Organization to
//! contacts, locations and cadre groups. See README.md.

use std::collections::{BTreeMap, HashMap};

use mhero_sdk::fhir::json::{codeable, entries, human_name, list, reference, telecoms, text};
use mhero_sdk::fhir::{
    Contact, EntryError, FhirMapper, Group, Location, Mapped, MapperInfo, PluginError, PluginInfo,
    PluginKind,
};
use mhero_sdk::host;
use serde_json::Value;

pub struct IhrisPractitioner;

const MAX_ANCESTRY: usize = 32;

struct Role {
    practitioner: String,
    codes: Vec<(String, String)>,
    locations: Vec<String>,
    organizations: Vec<String>,
}

fn languages(p: &Value) -> Result<Vec<String>, String> {
    Ok(list(p, "communication")?
        .iter()
        .filter_map(|c| codeable(c).map(|(code, _)| code))
        .collect())
}

fn place(resource: &Value, kind_of: &str, id: String) -> Result<Location, String> {
    let name = text(resource, "name").unwrap_or("").to_string();
    let kind = list(resource, "type")?
        .first()
        .and_then(codeable)
        .map(|(code, _)| code)
        .or_else(|| {
            resource
                .get("physicalType")
                .and_then(codeable)
                .map(|(code, _)| code)
        })
        .or_else(|| (kind_of == "Organization").then(|| "organization".to_string()));
    Ok(Location {
        source_id: id,
        name,
        parent: reference(resource.get("partOf")),
        kind,
    })
}

/// A FHIR Group: its name and its current members (`member.inactive`
/// ones and members whose period has ended are left out).
fn group(resource: &Value, id: String) -> Result<Group, String> {
    let mut members = Vec::new();
    for (i, m) in list(resource, "member")?.iter().enumerate() {
        if m.get("inactive").and_then(Value::as_bool) == Some(true) {
            continue;
        }
        if m.get("period").and_then(|p| p.get("end")).is_some() {
            continue;
        }
        match reference(m.get("entity")) {
            Some(r) => members.push(r),
            None => return Err(format!("member[{i}] has no entity reference")),
        }
    }
    Ok(Group {
        name: text(resource, "name").unwrap_or(&id).to_string(),
        source_id: id,
        members,
    })
}

impl FhirMapper for IhrisPractitioner {
    fn describe() -> MapperInfo {
        MapperInfo {
            plugin: PluginInfo {
                name: "ihris-practitioner".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::FhirMapper,
                summary: "iHRIS Practitioner, PractitionerRole, Location, Organization, Group to contacts, locations and groups".into(),
            },
            resource_types: ["Practitioner", "PractitionerRole", "Location", "Organization", "Group"].map(String::from).to_vec(),
        }
    }

    fn map_resources(json: String) -> Result<Mapped, PluginError> {
        let doc: Value = serde_json::from_str(&json)
            .map_err(|e| PluginError::invalid(format!("not JSON: {e}")))?;
        let mut errors = Vec::new();
        let mut practitioners: Vec<(u32, String, &Value)> = Vec::new();
        let mut roles: Vec<Role> = Vec::new();
        let mut places: BTreeMap<String, Location> = BTreeMap::new();
        let mut fhir_groups: Vec<Group> = Vec::new();

        for (index, resource) in entries(&doc)?.into_iter().enumerate() {
            let kind = text(resource, "resourceType");
            let id = text(resource, "id").map(str::to_string);
            let qualified = match (kind, &id) {
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
            if ![
                "Practitioner",
                "PractitionerRole",
                "Location",
                "Organization",
                "Group",
            ]
            .contains(&kind)
            {
                continue;
            }
            let Some(id) = qualified.clone() else {
                fail(format!("{kind} has no id"));
                continue;
            };
            match kind {
                "Practitioner" => practitioners.push((index as u32, id, resource)),
                "Group" => match group(resource, id) {
                    Ok(g) => fhir_groups.push(g),
                    Err(e) => fail(e),
                },
                "PractitionerRole" => {
                    if resource.get("active").and_then(Value::as_bool) == Some(false) {
                        continue;
                    }
                    let Some(practitioner) = reference(resource.get("practitioner")) else {
                        fail("PractitionerRole has no practitioner reference".into());
                        continue;
                    };
                    let parsed = (|| -> Result<Role, String> {
                        Ok(Role {
                            practitioner,
                            codes: list(resource, "code")?
                                .iter()
                                .filter_map(codeable)
                                .collect(),
                            locations: list(resource, "location")?
                                .iter()
                                .filter_map(|l| reference(Some(l)))
                                .collect(),
                            organizations: reference(resource.get("organization"))
                                .into_iter()
                                .collect(),
                        })
                    })();
                    match parsed {
                        Ok(role) => roles.push(role),
                        Err(e) => fail(e),
                    }
                }
                _ => match place(resource, kind, id.clone()) {
                    Ok(location) => {
                        places.insert(id, location);
                    }
                    Err(e) => fail(e),
                },
            }
        }

        let mut by_practitioner: HashMap<&str, Vec<&Role>> = HashMap::new();
        for role in &roles {
            by_practitioner
                .entry(role.practitioner.as_str())
                .or_default()
                .push(role);
        }
        let cadre_groups = host::config("cadre_groups").is_none_or(|v| v.trim() != "false");
        let mut groups: BTreeMap<String, Group> = BTreeMap::new();
        let mut contacts = Vec::with_capacity(practitioners.len());
        for (index, id, p) in practitioners {
            let contact = (|| -> Result<Contact, String> {
                let my_roles = by_practitioner
                    .get(id.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let mut roles: Vec<String> = Vec::new();
                let mut facilities: Vec<String> = Vec::new();
                let mut organizations: Vec<String> = Vec::new();
                for r in my_roles {
                    for (code, display) in &r.codes {
                        if !roles.contains(code) {
                            roles.push(code.clone());
                        }
                        if cadre_groups {
                            let g = groups.entry(code.clone()).or_insert_with(|| Group {
                                source_id: format!("cadre/{code}"),
                                name: display.clone(),
                                members: Vec::new(),
                            });
                            if !g.members.contains(&id) {
                                g.members.push(id.clone());
                            }
                        }
                    }
                    facilities.extend(
                        r.locations
                            .iter()
                            .filter(|l| !facilities.contains(l))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                    organizations.extend(
                        r.organizations
                            .iter()
                            .filter(|o| !organizations.contains(o))
                            .cloned()
                            .collect::<Vec<_>>(),
                    );
                }
                let mut ancestry = Vec::new();
                let mut next = facilities.first().or(organizations.first()).cloned();
                while let Some(place_id) = next {
                    if ancestry.contains(&place_id) || ancestry.len() >= MAX_ANCESTRY {
                        break;
                    }
                    next = places.get(&place_id).and_then(|l| l.parent.clone());
                    ancestry.push(place_id);
                }
                Ok(Contact {
                    source_id: id.clone(),
                    name: human_name(p)?,
                    telecoms: telecoms(p, "phone")?,
                    languages: languages(p)?,
                    roles,
                    facilities,
                    organizations,
                    location_ancestry: ancestry,
                    active: p.get("active").and_then(Value::as_bool).unwrap_or(true),
                })
            })();
            match contact {
                Ok(c) => contacts.push(c),
                Err(message) => errors.push(EntryError {
                    index,
                    resource: Some(id),
                    message,
                }),
            }
        }
        errors.sort_by_key(|e| e.index);
        Ok(Mapped {
            contacts,
            locations: places.into_values().collect(),
            groups: groups.into_values().chain(fhir_groups).collect(),
            errors,
        })
    }
}

mhero_sdk::export_fhir_mapper!(IhrisPractitioner);

#[cfg(test)]
mod tests;
