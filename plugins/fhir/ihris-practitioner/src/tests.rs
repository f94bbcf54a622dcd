use mhero_sdk::testing::MockHost;
use serde_json::json;

use super::*;
use mhero_sdk::fhir::Telecom;

fn bundle(resources: Vec<Value>) -> String {
    json!({
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": resources.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()
    })
    .to_string()
}

fn county() -> Value {
    json!({"resourceType": "Location", "id": "county-bong", "name": "Bong County", "type": [{"coding": [{"code": "county"}]}]})
}

fn district() -> Value {
    json!({"resourceType": "Location", "id": "district-suakoko", "name": "Suakoko District",
           "partOf": {"reference": "Location/county-bong"}, "type": [{"coding": [{"code": "district"}]}]})
}

fn facility() -> Value {
    json!({"resourceType": "Location", "id": "phebe", "name": "Phebe Hospital",
           "partOf": {"reference": "http://ihris.example/fhir/Location/district-suakoko/_history/3"},
           "physicalType": {"coding": [{"code": "bu", "display": "Building"}]}})
}

fn nurse() -> Value {
    json!({
        "resourceType": "Practitioner", "id": "p1", "active": true,
        "name": [{"use": "usual", "text": "Nurse Korto"}, {"use": "official", "family": "Kollie", "given": ["Korto", "M."]}],
        "telecom": [
            {"system": "phone", "value": "0770 123 456", "use": "mobile", "rank": 1},
            {"system": "email", "value": "korto@example.org"},
            {"system": "phone", "value": "   "}
        ],
        "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}]
    })
}

fn role() -> Value {
    json!({"resourceType": "PractitionerRole", "id": "r1", "active": true,
           "practitioner": {"reference": "Practitioner/p1"},
           "code": [{"coding": [{"code": "nurse", "display": "Registered Nurse"}]}],
           "location": [{"reference": "Location/phebe"}],
           "organization": {"reference": "Organization/moh"}})
}

#[test]
fn an_ihris_bundle_becomes_contacts_with_roles_facilities_and_ancestry() {
    let _host = MockHost::new().install();
    let doc = bundle(vec![
        nurse(),
        role(),
        facility(),
        district(),
        county(),
        json!({"resourceType": "Organization", "id": "moh", "name": "Ministry of Health"}),
    ]);
    let mapped = IhrisPractitioner::map_resources(doc).unwrap();
    assert!(mapped.errors.is_empty(), "{:?}", mapped.errors);
    assert_eq!(mapped.contacts.len(), 1);
    let c = &mapped.contacts[0];
    assert_eq!(c.source_id, "Practitioner/p1");
    assert_eq!(c.name, "Korto M. Kollie", "the official name wins");
    assert_eq!(c.telecoms.len(), 2, "blank values are dropped");
    assert_eq!(
        c.telecoms[0],
        Telecom {
            system: "phone".into(),
            value: "0770 123 456".into(),
            use_: Some("mobile".into()),
            rank: Some(1)
        }
    );
    assert_eq!(c.languages, vec!["en"]);
    assert_eq!(c.roles, vec!["nurse"]);
    assert_eq!(c.facilities, vec!["Location/phebe"]);
    assert_eq!(c.organizations, vec!["Organization/moh"]);
    assert_eq!(
        c.location_ancestry,
        vec![
            "Location/phebe",
            "Location/district-suakoko",
            "Location/county-bong"
        ]
    );
    assert!(c.active);
    assert_eq!(mapped.locations.len(), 4);
    let phebe = mapped
        .locations
        .iter()
        .find(|l| l.source_id == "Location/phebe")
        .unwrap();
    assert_eq!(phebe.parent.as_deref(), Some("Location/district-suakoko"));
    assert_eq!(phebe.kind.as_deref(), Some("bu"));
    let moh = mapped
        .locations
        .iter()
        .find(|l| l.source_id == "Organization/moh")
        .unwrap();
    assert_eq!(moh.kind.as_deref(), Some("organization"));
    assert_eq!(
        mapped.groups,
        vec![Group {
            source_id: "cadre/nurse".into(),
            name: "Registered Nurse".into(),
            members: vec!["Practitioner/p1".into()]
        }]
    );
}

#[test]
fn bad_entries_are_reported_and_the_rest_mapped() {
    let _host = MockHost::new().config("cadre_groups", "false").install();
    let doc = bundle(vec![
        json!({"resourceType": "Practitioner", "name": [{"text": "No Id"}]}),
        json!({"resourceType": "Practitioner", "id": "p2", "telecom": "not a list"}),
        json!({"resourceType": "Practitioner", "id": "p3", "telecom": [{"system": "phone", "value": 770123}]}),
        json!({"no": "resourceType"}),
        json!({"resourceType": "PractitionerRole", "id": "r9"}),
        json!({"resourceType": "Patient", "id": "x"}),
        json!({"resourceType": "Practitioner", "id": "p4", "active": false, "name": [{"given": ["Musu"], "family": "Flomo"}]}),
        nurse(),
        role(),
    ]);
    let mapped = IhrisPractitioner::map_resources(doc).unwrap();
    let errors: Vec<(u32, Option<&str>)> = mapped
        .errors
        .iter()
        .map(|e| (e.index, e.resource.as_deref()))
        .collect();
    assert_eq!(
        errors,
        vec![
            (0, None),
            (1, Some("Practitioner/p2")),
            (2, Some("Practitioner/p3")),
            (3, None),
            (4, Some("PractitionerRole/r9"))
        ]
    );
    assert!(mapped.errors[1].message.contains("telecom"));
    assert!(mapped.errors[2].message.contains("telecom[0].value"));
    let names: Vec<&str> = mapped.contacts.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, vec!["Musu Flomo", "Korto M. Kollie"]);
    assert!(!mapped.contacts[0].active);
    assert!(
        mapped.contacts[0].telecoms.is_empty(),
        "no telecom is still a contact"
    );
    assert!(mapped.groups.is_empty(), "cadre_groups = false");
    assert_eq!(
        mapped.contacts[1].location_ancestry,
        vec!["Location/phebe"],
        "ancestry as far as the document shows"
    );
}

#[test]
fn a_single_resource_and_non_fhir_input() {
    let mapped = IhrisPractitioner::map_resources(nurse().to_string()).unwrap();
    assert_eq!(mapped.contacts.len(), 1);
    assert!(mapped.contacts[0].roles.is_empty());
    assert!(matches!(
        IhrisPractitioner::map_resources("{".into()),
        Err(PluginError::InvalidInput(_))
    ));
    assert!(matches!(
        IhrisPractitioner::map_resources("{}".into()),
        Err(PluginError::InvalidInput(_))
    ));
    let empty =
        IhrisPractitioner::map_resources(json!({"resourceType": "Bundle"}).to_string()).unwrap();
    assert!(empty.contacts.is_empty() && empty.errors.is_empty());
}

#[test]
fn inactive_roles_are_ignored_and_cycles_in_parents_end() {
    let mut inactive = role();
    inactive["active"] = json!(false);
    let a = json!({"resourceType": "Location", "id": "a", "name": "A", "partOf": {"reference": "Location/b"}});
    let b = json!({"resourceType": "Location", "id": "b", "name": "B", "partOf": {"reference": "Location/a"}});
    let mut to_a = role();
    to_a["id"] = json!("r2");
    to_a["location"] = json!([{"reference": "Location/a"}]);
    let mapped =
        IhrisPractitioner::map_resources(bundle(vec![nurse(), inactive, to_a, a, b])).unwrap();
    assert_eq!(mapped.contacts[0].facilities, vec!["Location/a"]);
    assert_eq!(
        mapped.contacts[0].location_ancestry,
        vec!["Location/a", "Location/b"]
    );
}

#[test]
fn fhir_groups_keep_their_current_members() {
    let _host = MockHost::new().install();
    let mapped = IhrisPractitioner::map_resources(bundle(vec![
        json!({"resourceType": "Group", "id": "responders", "type": "practitioner", "actual": true,
        "name": "Ebola responders",
        "member": [
            {"entity": {"reference": "Practitioner/p1"}},
            {"entity": {"reference": "Practitioner/p2"}, "inactive": true},
            {"entity": {"reference": "Practitioner/p3"}, "period": {"end": "2020-01-01"}}
        ]}),
        json!({"resourceType": "Group", "id": "broken", "member": [{"entity": {}}]}),
    ]))
    .unwrap();
    assert_eq!(mapped.groups.len(), 1);
    assert_eq!(mapped.groups[0].source_id, "Group/responders");
    assert_eq!(mapped.groups[0].name, "Ebola responders");
    assert_eq!(mapped.groups[0].members, vec!["Practitioner/p1"]);
    assert_eq!(mapped.errors.len(), 1);
    assert!(
        mapped.errors[0].message.contains("member[0]"),
        "{:?}",
        mapped.errors
    );
}

/// The golden fixtures, run natively the way the broker runs them on the
/// component.
#[test]
fn golden_fixtures_pass_natively() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let ran = mhero_sdk::testing::fhir_mapper_fixtures::<IhrisPractitioner>(
        include_str!("../plugin.toml"),
        &dir,
    );
    assert_eq!(ran, 3);
}
