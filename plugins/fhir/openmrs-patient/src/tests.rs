use mhero_sdk::testing::MockHost;
use serde_json::json;

use super::*;

fn bundle(resources: Vec<Value>) -> String {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": resources.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()
    })
    .to_string()
}

fn client() -> Value {
    json!({
        "resourceType": "Patient", "id": "8d8718c2-c2cc-11de-8d13-0010c6dffd0f",
        "active": true,
        "name": [{"family": "Kollie", "given": ["Musu"]}],
        "telecom": [{"value": "0886 123 456"}],
        "communication": [
            {"language": {"coding": [{"code": "en"}]}},
            {"language": {"coding": [{"code": "fr"}]}, "preferred": true}
        ],
        "managingOrganization": {"reference": "Organization/phebe-art-clinic"},
        "generalPractitioner": [{"reference": "Practitioner/p1"}, {"reference": "Organization/moh"}]
    })
}

#[test]
fn an_openmrs_patient_becomes_a_client_contact() {
    let _host = MockHost::new().install();
    let mapped = OpenmrsPatient::map_resources(bundle(vec![client()])).unwrap();
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    let c = &mapped.contacts[0];
    assert_eq!(c.source_id, "Patient/8d8718c2-c2cc-11de-8d13-0010c6dffd0f");
    assert_eq!(c.name, "Musu Kollie");
    assert_eq!(c.telecoms[0].system, "phone", "no system: a phone");
    assert_eq!(c.telecoms[0].value, "0886 123 456");
    assert_eq!(c.languages, vec!["fr", "en"], "preferred first");
    assert_eq!(c.roles, vec!["client"]);
    assert_eq!(
        c.organizations,
        vec!["Organization/phebe-art-clinic", "Organization/moh"]
    );
    assert!(c.active);
}

#[test]
fn the_deceased_are_never_messaged_and_bad_entries_are_reported() {
    let _host = MockHost::new().config("role", "art-client").install();
    let mut dead = client();
    dead["id"] = json!("d1");
    dead["deceasedDateTime"] = json!("2024-03-01");
    let mut bad = client();
    bad["id"] = json!("b1");
    bad["telecom"] = json!("0886");
    let mapped = OpenmrsPatient::map_resources(bundle(vec![
        dead,
        bad,
        json!({"resourceType": "Patient"}),
        json!({"resourceType": "Location", "id": "clinic", "name": "ART clinic", "partOf": {"reference": "Location/phebe"}}),
        json!({"resourceType": "Encounter", "id": "e1"}),
    ]))
    .unwrap();
    assert_eq!(mapped.contacts.len(), 1);
    assert!(!mapped.contacts[0].active);
    assert_eq!(mapped.contacts[0].roles, vec!["art-client"]);
    let errors: Vec<(u32, &str)> = mapped
        .errors
        .iter()
        .map(|e| (e.index, e.message.as_str()))
        .collect();
    assert_eq!(
        errors,
        vec![(1, "`telecom` must be a list"), (2, "Patient has no id")]
    );
    assert_eq!(
        mapped.locations[0].parent.as_deref(),
        Some("Location/phebe")
    );
    assert!(OpenmrsPatient::map_resources("{\"x\":1}".into()).is_err());
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component.
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran = mhero_sdk::testing::fhir_mapper_fixtures::<OpenmrsPatient>(
        include_str!("../plugin.toml"),
        &dir,
    );
    assert_eq!(ran, 2);
}
