//! {{name}}: a FHIR source mapper. `map_resources` reads one FHIR R4
//! document (a resource or a Bundle) and returns the contacts in it; an
//! entry it cannot read becomes an entry error and the rest are mapped.

use mhero_sdk::fhir::json::{entries, human_name, telecoms, text};
use mhero_sdk::fhir::{
    Contact, EntryError, FhirMapper, Mapped, MapperInfo, PluginError, PluginInfo, PluginKind,
};
use serde_json::Value;

pub struct Plugin;

impl FhirMapper for Plugin {
    fn describe() -> MapperInfo {
        MapperInfo {
            plugin: PluginInfo {
                name: "{{name}}".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                kind: PluginKind::FhirMapper,
                summary: "{{summary}}".into(),
            },
            resource_types: vec!["Practitioner".into()],
        }
    }

    fn map_resources(json: String) -> Result<Mapped, PluginError> {
        let doc: Value = serde_json::from_str(&json)
            .map_err(|e| PluginError::InvalidInput(format!("not JSON: {e}")))?;
        let mut mapped = Mapped {
            contacts: Vec::new(),
            locations: Vec::new(),
            groups: Vec::new(),
            errors: Vec::new(),
        };
        for (index, r) in entries(&doc)?.into_iter().enumerate() {
            if text(r, "resourceType") != Some("Practitioner") {
                continue;
            }
            let contact = (|| -> Result<Contact, String> {
                let id = text(r, "id").ok_or("Practitioner has no id")?;
                Ok(Contact {
                    source_id: format!("Practitioner/{id}"),
                    name: human_name(r)?,
                    telecoms: telecoms(r, "phone")?,
                    languages: Vec::new(),
                    roles: Vec::new(),
                    facilities: Vec::new(),
                    organizations: Vec::new(),
                    location_ancestry: Vec::new(),
                    active: r.get("active").and_then(Value::as_bool).unwrap_or(true),
                })
            })();
            match contact {
                Ok(c) => mapped.contacts.push(c),
                Err(message) => mapped.errors.push(EntryError {
                    index: index as u32,
                    resource: text(r, "id").map(|i| format!("Practitioner/{i}")),
                    message,
                }),
            }
        }
        Ok(mapped)
    }
}

mhero_sdk::export_fhir_mapper!(Plugin);

#[cfg(test)]
mod tests {
    /// `tests/fixtures/*.json`, run natively as `mhero plugin test` runs
    /// them on the built component.
    #[test]
    fn golden_fixtures_pass_natively() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let ran = mhero_sdk::testing::fhir_mapper_fixtures::<super::Plugin>(
            include_str!("../plugin.toml"),
            &dir,
        );
        assert!(ran > 0, "no fixtures in {}", dir.display());
    }
}
