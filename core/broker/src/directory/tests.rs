//! The directory on the in-memory engine (and on RocksDB where it matters):
//! imports, merging, selectors against a brute-force model, freezing.

use std::sync::Arc;

use proptest::prelude::*;
use roaring::RoaringBitmap;

use super::*;
use crate::audience::{AudienceSource, Member};
use crate::store::{Engine, MemoryEngine};

fn dir() -> Directory {
    Directory::open(Arc::new(MemoryEngine::new())).unwrap()
}

fn worker(id: &str, phone: &str, role: &str, facility: &str) -> IncomingContact {
    IncomingContact {
        roles: vec![role.into()],
        facilities: vec![format!("Location/{facility}")],
        ..crate::testkit::phone_worker(id, phone)
    }
}

fn place(id: &str, parent: Option<&str>) -> IncomingPlace {
    IncomingPlace {
        id: format!("Location/{id}"),
        name: id.to_uppercase(),
        parent: parent.map(|p| format!("Location/{p}")),
        kind: None,
    }
}

/// Liberia → Bong county → two districts → facilities.
fn places() -> Vec<IncomingPlace> {
    vec![
        place("lr", None),
        place("bong", Some("lr")),
        place("nimba", Some("lr")),
        place("jorquelleh", Some("bong")),
        place("suakoko", Some("bong")),
        place("phebe", Some("suakoko")),
        place("gbarnga-hc", Some("jorquelleh")),
        place("ganta-hc", Some("nimba")),
    ]
}

fn count(d: &Directory, s: &str) -> u64 {
    d.count(s, &[]).unwrap().selected
}

#[test]
fn selectors_combine_roles_location_subtrees_and_groups() {
    let d = dir();
    let report = d
        .import(
            "ihris",
            "LR",
            Incoming {
                places: places(),
                contacts: vec![
                    worker("1", "0770000001", "Nurse", "phebe"),
                    worker("2", "0770000002", "nurse", "gbarnga-hc"),
                    worker("3", "0770000003", "midwife", "gbarnga-hc"),
                    worker("4", "0770000004", "nurse", "ganta-hc"),
                    IncomingContact {
                        active: false,
                        ..worker("5", "0770000005", "nurse", "phebe")
                    },
                ],
                groups: vec![IncomingGroup {
                    id: "Group/retiring".into(),
                    name: "Retiring in 2026".into(),
                    members: vec!["Practitioner/2".into()],
                }],
                errors: vec![],
            },
        )
        .unwrap();
    assert_eq!((report.created, report.places, report.groups), (5, 8, 1));
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(count(&d, "*"), 4, "the inactive worker is never selected");
    assert_eq!(count(&d, "role:NURSE"), 3);
    assert_eq!(count(&d, "location:bong"), 3, "two districts deep");
    assert_eq!(count(&d, "location:Location/suakoko"), 1);
    assert_eq!(count(&d, "facility:gbarnga-hc"), 2);
    assert_eq!(
        count(
            &d,
            "role:nurse AND location:Location/bong AND NOT group:retiring"
        ),
        1
    );
    assert_eq!(count(&d, "group:\"retiring in 2026\""), 1, "by name");
    assert_eq!(count(&d, "NOT location:bong"), 1);
    assert_eq!(count(&d, "role:midwife OR location:nimba"), 2);
    let c = d.count("role:surgeon AND location:bong", &[]).unwrap();
    assert_eq!(c.selected, 0);
    assert_eq!(c.unknown_terms, vec!["role:surgeon"]);
    let e = d.count("role:nurse AND", &[]).unwrap_err();
    assert!(e.to_string().contains("audience.selector"), "{e}");

    // Ancestry is read from the tree.
    let ids: Vec<String> = d
        .ancestry("Location/phebe")
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        ids,
        [
            "Location/phebe",
            "Location/suakoko",
            "Location/bong",
            "Location/lr"
        ]
    );
    // A district moved to another county takes its facilities along.
    d.import(
        "ihris",
        "LR",
        Incoming {
            places: vec![place("suakoko", Some("nimba"))],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(count(&d, "location:bong"), 2);
    assert_eq!(count(&d, "location:nimba"), 2);
}

#[test]
fn numbers_are_normalised_and_bad_ones_reported_per_contact() {
    let d = dir();
    let mut noisy = worker("1", "not a number", "nurse", "phebe");
    noisy.telecoms.push(Telecom {
        system: "phone".into(),
        value: "+231 77 000 0009".into(),
        use_: Some("work".into()),
        rank: None,
    });
    let no_phone = IncomingContact {
        telecoms: vec![],
        ..worker("2", "", "nurse", "phebe")
    };
    let r = d
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![
                    noisy,
                    no_phone,
                    worker("3", "0880 123 456", "nurse", "phebe"),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.created, 3);
    assert_eq!(r.problems.len(), 1);
    assert_eq!(r.problems[0].resource.as_deref(), Some("Practitioner/1"));
    assert!(
        r.problems[0].message.contains("not a phone number"),
        "{:?}",
        r.problems
    );
    assert_eq!(r.unreachable, vec!["Practitioner/2"]);
    let c = d.find("Practitioner/1").unwrap().unwrap();
    assert_eq!(c.phone(), Some("+231770000009"), "the valid one is kept");
    assert_eq!(c.parts[0].problems.len(), 1);
    assert_eq!(d.find("+231880123456").unwrap().unwrap().name(), "Worker 3");
    let count = d.count("*", &["sms".into()]).unwrap();
    assert_eq!((count.selected, count.unreachable), (3, 1));
}

#[test]
fn sources_merge_by_number_and_duplicates_within_one_are_reported() {
    let d = dir();
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![
                worker("1", "0770000001", "nurse", "phebe"),
                worker("2", "0770000002", "nurse", "phebe"),
                // The same number on a second iHRIS record: a registry error.
                worker("2b", "+231770000002", "nurse", "phebe"),
            ],
            ..Default::default()
        },
    )
    .map(|r| {
        assert_eq!(r.created, 3);
        assert_eq!(
            r.duplicates,
            vec![(
                "+231770000002".to_string(),
                vec!["Practitioner/2".to_string(), "Practitioner/2b".to_string()]
            )]
        );
    })
    .unwrap();
    // OpenMRS knows worker 1 by the same number: one contact, two parts.
    let mut patient = worker("x", "0770000001", "chw", "ganta-hc");
    patient.resource = "Patient/77".into();
    patient.languages = vec!["fr-LR".into()];
    let r = d
        .import(
            "openmrs",
            "LR",
            Incoming {
                contacts: vec![patient],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.created, r.merged), (0, 1));
    let c = d.find("openmrs:Patient/77").unwrap().unwrap();
    assert_eq!(c.parts.len(), 2);
    assert_eq!(c.name(), "Worker 1", "the first source's name");
    assert_eq!(c.roles(), ["nurse", "chw"]);
    assert_eq!(count(&d, "role:chw AND role:nurse AND lang:fr"), 1);
    assert_eq!(count(&d, "*"), 3);

    // An update replaces what that source said; the other source's part stays.
    let mut moved = worker("1", "0770000001", "midwife", "phebe");
    moved.version_id = Some("2".into());
    let r = d
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![moved.clone()],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(r.updated, 1);
    assert_eq!(count(&d, "role:nurse"), 2, "worker 1 is a midwife now");
    assert_eq!(count(&d, "role:midwife AND role:chw"), 1);
    // The same version again writes nothing.
    let r = d
        .import(
            "ihris",
            "LR",
            Incoming {
                contacts: vec![moved],
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((r.updated, r.unchanged), (0, 1));

    // Deleted at the source: the iHRIS part goes, the OpenMRS part stays.
    let r = d.remove("ihris", &["Practitioner/1".into()]).unwrap();
    assert_eq!(r.removed, 1);
    let c = d.find("openmrs:Patient/77").unwrap().unwrap();
    assert_eq!(c.parts.len(), 1);
    assert_eq!(count(&d, "role:midwife"), 0);
    d.remove("openmrs", &["Patient/77".into()]).unwrap();
    assert!(d.find("+231770000001").unwrap().is_none());
    assert_eq!(count(&d, "*"), 2);
    assert_eq!(d.resources_of("ihris").unwrap().len(), 2);
}

#[test]
fn group_members_named_before_they_arrive_join_when_they_do() {
    let d = dir();
    d.import(
        "ihris",
        "LR",
        Incoming {
            groups: vec![IncomingGroup {
                id: "Group/ebola-responders".into(),
                name: "Ebola responders".into(),
                members: vec!["Practitioner/1".into(), "Practitioner/9".into()],
            }],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(count(&d, "group:ebola-responders"), 0);
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![worker("1", "0770000001", "nurse", "phebe")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(count(&d, "group:ebola-responders"), 1);
    // A FHIR Group synced again is its whole membership.
    d.import(
        "ihris",
        "LR",
        Incoming {
            groups: vec![IncomingGroup {
                id: "Group/ebola-responders".into(),
                name: "Ebola responders".into(),
                members: vec![],
            }],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(count(&d, "group:ebola-responders"), 0);
}

#[test]
fn channels_count_first_choices_and_the_unreachable() {
    let d = dir();
    let mut on_whatsapp = worker("1", "0770000001", "nurse", "phebe");
    on_whatsapp.telecoms.push(Telecom {
        system: "whatsapp".into(),
        value: "+231770000001".into(),
        ..Default::default()
    });
    let telegram_only = IncomingContact {
        telecoms: vec![Telecom {
            system: "telegram".into(),
            value: "chat-42".into(),
            ..Default::default()
        }],
        ..worker("2", "", "nurse", "phebe")
    };
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![
                on_whatsapp,
                telegram_only,
                worker("3", "0770000003", "nurse", "phebe"),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let c = d
        .count("role:nurse", &["whatsapp".into(), "sms".into()])
        .unwrap();
    assert_eq!(c.selected, 3);
    // Dispatch routes to WhatsApp by the phone number too, as the count says.
    assert_eq!(
        c.by_channel,
        vec![("whatsapp".into(), 2), ("sms".into(), 0)]
    );
    assert_eq!(c.unreachable, 1, "the Telegram-only worker");
    let c = d.count("has:telegram", &["telegram".into()]).unwrap();
    assert_eq!((c.selected, c.unreachable), (1, 0));
}

#[test]
fn a_frozen_audience_keeps_its_members_and_withholds_who_opted_out() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let d = Directory::open(Arc::clone(&engine)).unwrap();
    let contacts = (0..50)
        .map(|i| {
            worker(
                &i.to_string(),
                &format!("07700{i:05}"),
                if i % 2 == 0 { "nurse" } else { "midwife" },
                "phebe",
            )
        })
        .collect();
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts,
            ..Default::default()
        },
    )
    .unwrap();
    let campaign = mhero_proto::CampaignId(7);
    assert_eq!(d.freeze(campaign, "role:nurse").unwrap(), 25);
    // New nurses after the freeze do not join it.
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![worker("new", "0770099999", "nurse", "phebe")],
            ..Default::default()
        },
    )
    .unwrap();
    let nurse_4 = d.find("Practitioner/4").unwrap().unwrap().number;
    d.set_opted_out(
        nurse_4,
        Some(OptOut {
            at_ms: 1,
            via: "STOP by sms".into(),
        }),
    )
    .unwrap();
    assert_eq!(count(&d, "role:nurse"), 25, "26 nurses, one opted out");

    // A restart reads the same audience back.
    let d = Directory::open(engine).unwrap();
    let a = d.frozen(campaign).unwrap();
    assert_eq!(a.len(), 25);
    let mut positions = Vec::new();
    let mut withheld = Vec::new();
    let mut from = 0;
    while from < a.len() {
        let page = a.page(from, 7).unwrap();
        assert!(!page.is_empty());
        for (i, m) in &page {
            positions.push(*i);
            match m {
                Member::Reach(r) => assert!(r.phone.is_some()),
                Member::Withheld(why) => withheld.push((*i, why.clone())),
            }
        }
        from = page.last().unwrap().0 + 1;
    }
    assert_eq!(positions, (0..25).collect::<Vec<_>>());
    assert_eq!(
        withheld,
        vec![(2, "opted out".to_string())],
        "nurse 4 is the third"
    );
    assert_eq!(
        a.get(3).unwrap().unwrap().phone.as_deref(),
        Some("+231770000006")
    );
    assert!(a.get(2).unwrap().is_none());
    assert!(a.get(25).unwrap().is_none());
    assert_eq!(d.summary().opted_out, 1);
}

#[test]
fn the_indexes_survive_a_reopen_of_a_rocksdb_store() {
    let tmp = tempfile::tempdir().unwrap();
    let config = crate::store::StoreConfig::default();
    {
        let engine: Arc<dyn Engine> = Arc::new(
            crate::store::RocksEngine::open(tmp.path(), &config, Default::default()).unwrap(),
        );
        let d = Directory::open(engine).unwrap();
        d.import(
            "ihris",
            "LR",
            Incoming {
                places: places(),
                contacts: vec![
                    worker("1", "0770000001", "nurse", "phebe"),
                    worker("2", "0770000002", "midwife", "ganta-hc"),
                ],
                ..Default::default()
            },
        )
        .unwrap();
    }
    let engine: Arc<dyn Engine> =
        Arc::new(crate::store::RocksEngine::open(tmp.path(), &config, Default::default()).unwrap());
    let d = Directory::open(engine).unwrap();
    assert_eq!(count(&d, "location:bong AND role:nurse"), 1);
    assert_eq!(count(&d, "location:lr"), 2);
    // Numbers continue after the last one.
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![worker("3", "0770000003", "nurse", "phebe")],
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(d.find("Practitioner/3").unwrap().unwrap().number, 2);
}

/// A selector over random contacts gives what a contact-by-contact
/// evaluation of the same expression gives.
mod model {
    use super::*;

    const ROLES: [&str; 3] = ["nurse", "midwife", "chw"];
    const FACILITIES: [&str; 4] = ["phebe", "gbarnga-hc", "ganta-hc", "suakoko"];

    fn expr() -> impl Strategy<Value = Expr> {
        let leaf = prop_oneof![
            Just(Expr::All),
            (0..ROLES.len()).prop_map(|i| Expr::Term(Field::Role, ROLES[i].into())),
            (0..FACILITIES.len()).prop_map(|i| Expr::Term(Field::Location, FACILITIES[i].into())),
            Just(Expr::Term(Field::Location, "bong".into())),
            Just(Expr::Term(Field::Group, "g".into())),
            Just(Expr::Term(Field::Has, "whatsapp".into())),
        ];
        leaf.prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|e| Expr::Not(Box::new(e))),
                prop::collection::vec(inner.clone(), 2..4).prop_map(Expr::And),
                prop::collection::vec(inner, 2..4).prop_map(Expr::Or),
            ]
        })
    }

    #[derive(Clone, Debug)]
    struct Person {
        role: usize,
        facility: usize,
        in_group: bool,
        whatsapp: bool,
        active: bool,
    }

    fn person() -> impl Strategy<Value = Person> {
        (
            0..ROLES.len(),
            0..FACILITIES.len(),
            any::<bool>(),
            any::<bool>(),
            0..10u8,
        )
            .prop_map(|(role, facility, in_group, whatsapp, a)| Person {
                role,
                facility,
                in_group,
                whatsapp,
                active: a > 1,
            })
    }

    fn holds(e: &Expr, p: &Person) -> bool {
        match e {
            Expr::All => true,
            Expr::Term(Field::Role, v) => ROLES[p.role] == v,
            Expr::Term(Field::Location, v) => {
                let f = FACILITIES[p.facility];
                // phebe and gbarnga-hc are in Bong (through suakoko and
                // jorquelleh); ganta-hc is in Nimba.
                f == v || (v == "bong" && f != "ganta-hc") || (v == "suakoko" && f == "phebe")
            }
            Expr::Term(Field::Group, _) => p.in_group,
            Expr::Term(Field::Has, _) => p.whatsapp,
            Expr::Term(..) => unreachable!(),
            Expr::Not(e) => !holds(e, p),
            Expr::And(es) => es.iter().all(|e| holds(e, p)),
            Expr::Or(es) => es.iter().any(|e| holds(e, p)),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn selectors_agree_with_a_contact_by_contact_evaluation(
            people in prop::collection::vec(person(), 0..60),
            e in expr(),
        ) {
            let d = dir();
            let contacts = people.iter().enumerate().map(|(i, p)| {
                let mut c = worker(&i.to_string(), &format!("07700{i:05}"), ROLES[p.role], FACILITIES[p.facility]);
                c.active = p.active;
                if p.whatsapp {
                    c.telecoms.push(Telecom { system: "whatsapp".into(), value: format!("07700{i:05}"), ..Default::default() });
                }
                c
            }).collect();
            let members = people.iter().enumerate().filter(|(_, p)| p.in_group)
                .map(|(i, _)| format!("Practitioner/{i}")).collect();
            d.import("ihris", "LR", Incoming {
                places: places(),
                contacts,
                groups: vec![IncomingGroup { id: "Group/g".into(), name: "g".into(), members }],
                errors: vec![],
            }).unwrap();
            let (got, _) = d.select(&e.to_string()).unwrap();
            let want: RoaringBitmap = people.iter().enumerate()
                .filter(|(_, p)| p.active && holds(&e, p))
                .map(|(i, _)| i as u32)
                .collect();
            prop_assert_eq!(got, want, "{}", e);
        }
    }
}

/// A generated iHRIS registry, through the real mapper plugin, gives the
/// counts the generator's own rules give.
#[test]
fn a_generated_ihris_registry_imports_through_the_mapper_with_its_noise_reported() {
    use super::generate::{ROLES, Registry};
    use crate::plugin::{HostOptions, Kind, PluginHost, PluginMetrics};

    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    host.load_builtins().unwrap();
    let mapper = host
        .require("ihris-practitioner", Kind::FhirMapper)
        .unwrap();
    let d = dir();
    let reg = Registry {
        noise_percent: 6.0,
        retired_percent: 3.0,
        page: 500,
        ..Registry::new(3000)
    };
    let mut report = ImportReport::default();
    let mut docs = vec![reg.places_bundle()];
    docs.extend((0..reg.pages()).map(|p| reg.practitioners_page(p)));
    docs.push(reg.groups_bundle());
    for doc in docs {
        let (r, _) = sync::import_document(&d, &mapper, "ihris", "LR", &doc.to_string()).unwrap();
        report.absorb(r);
    }
    assert_eq!(report.contacts(), 3000);
    assert_eq!(
        report.created, 3000,
        "shared numbers within one source stay apart"
    );
    let noisy: Vec<u32> = (0..3000)
        .filter(|i| {
            reg.practitioner(*i).0["telecom"]
                .as_array()
                .unwrap()
                .is_empty()
                || reg.practitioner(*i).0["telecom"][0]["value"]
                    .as_str()
                    .unwrap()
                    .starts_with("077-")
        })
        .collect();
    let malformed = noisy
        .iter()
        .filter(|i| {
            !reg.practitioner(**i).0["telecom"]
                .as_array()
                .unwrap()
                .is_empty()
        })
        .count();
    assert!(
        malformed > 0 && report.problems.len() == malformed,
        "{} vs {malformed}",
        report.problems.len()
    );
    assert!(!report.duplicates.is_empty());
    let retired = (0..3000)
        .filter(|i| reg.practitioner(*i).0["active"] == false)
        .count() as u64;
    assert_eq!(count(&d, "*"), 3000 - retired);

    // Nurses in Bong county, by the generator's rules.
    let want = (0..3000)
        .filter(|i| {
            let (p, r) = reg.practitioner(*i);
            p["active"] == true && r["code"][0]["coding"][0]["code"] == ROLES[0].0 && {
                let f: u32 = r["location"][0]["reference"].as_str().unwrap()["Location/F-".len()..]
                    .parse()
                    .unwrap();
                reg.district_of(f).starts_with("Location/D-bong-")
            }
        })
        .count() as u64;
    assert!(want > 0);
    assert_eq!(count(&d, "role:nurse AND location:C-bong"), want);
    assert_eq!(
        count(
            &d,
            "role:nurse AND location:C-bong AND NOT group:\"Ebola responders\""
        ),
        want - (0..3000)
            .step_by(20)
            .filter(|i| {
                let (p, r) = reg.practitioner(*i);
                p["active"] == true
                    && r["code"][0]["coding"][0]["code"] == ROLES[0].0
                    && reg
                        .district_of(
                            r["location"][0]["reference"].as_str().unwrap()["Location/F-".len()..]
                                .parse()
                                .unwrap(),
                        )
                        .starts_with("Location/D-bong-")
            })
            .count() as u64
    );
    assert_eq!(count(&d, "lang:fr"), count(&d, "lang:fr AND *"));
    let c = d.find("ihris:Practitioner/P-7").unwrap().unwrap();
    assert_eq!(c.parts[0].version_id.as_deref(), Some("1"));
    assert!(c.parts[0].last_updated.is_some());
}

#[test]
fn the_quality_report_lists_shared_numbers_unreachable_workers_and_bad_data() {
    let d = dir();
    let no_phone = IncomingContact {
        telecoms: vec![],
        ..worker("3", "", "nurse", "phebe")
    };
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![
                worker("1", "0770000001", "nurse", "phebe"),
                worker("2", "+231770000001", "nurse", "phebe"),
                no_phone,
                worker("4", "077-12", "nurse", "phebe"),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let q = d.quality(10).unwrap();
    assert_eq!(
        q.shared_numbers,
        vec![(
            "+231770000001".to_string(),
            vec![
                "ihris:Practitioner/1".to_string(),
                "ihris:Practitioner/2".to_string()
            ]
        )]
    );
    assert_eq!(
        q.unreachable,
        vec!["ihris:Practitioner/3", "ihris:Practitioner/4"]
    );
    assert_eq!(q.problems.len(), 1);
    assert_eq!(q.problems[0].0, "ihris:Practitioner/4");
    assert!(q.problems[0].1[0].contains("077-12"), "{:?}", q.problems);
    let q = d.quality(1).unwrap();
    assert_eq!((q.unreachable.len(), q.unreachable_total), (1, 2));
}

/// `mhero import <folder>`: every readable FHIR file imported in name
/// order, each bad one reported under its name.
#[test]
fn a_folder_imports_with_bad_files_reported_by_name() {
    use super::generate::Registry;
    use crate::plugin::{HostOptions, Kind, PluginHost, PluginMetrics};

    let host = PluginHost::new(HostOptions::default(), PluginMetrics::default()).unwrap();
    host.load_builtins().unwrap();
    let mapper = host
        .require("ihris-practitioner", Kind::FhirMapper)
        .unwrap();
    let folder = tempfile::tempdir().unwrap();
    let reg = Registry {
        page: 50,
        ..Registry::new(200)
    };
    std::fs::write(
        folder.path().join("0-places.json"),
        reg.places_bundle().to_string(),
    )
    .unwrap();
    for p in 0..reg.pages() {
        std::fs::write(
            folder.path().join(format!("1-workers-{p}.json")),
            reg.practitioners_page(p).to_string(),
        )
        .unwrap();
    }
    std::fs::write(folder.path().join("2-broken.json"), "{\"resourceType\": ").unwrap();
    std::fs::write(folder.path().join("3-other.json"), "[1, 2]").unwrap();
    std::fs::write(folder.path().join("notes.txt"), "not read").unwrap();
    let d = dir();
    let mut seen = Vec::new();
    let report = sync::import_path(&d, &mapper, "import", "LR", folder.path(), |f, _| {
        seen.push(f.file_name().unwrap().to_string_lossy().into_owned())
    })
    .unwrap();
    assert_eq!(report.created, 200);
    assert_eq!(seen.len(), 2 + reg.pages() as usize + 1, "{seen:?}");
    assert_eq!(seen.first().map(String::as_str), Some("0-places.json"));
    let bad: Vec<(&str, &str)> = report
        .problems
        .iter()
        .map(|p| (p.resource.as_deref().unwrap(), p.message.as_str()))
        .collect();
    assert_eq!(bad.len(), 2, "{bad:?}");
    assert!(
        bad[0].0.ends_with("2-broken.json") && bad[0].1.contains("not JSON"),
        "{bad:?}"
    );
    assert!(
        bad[1].0.ends_with("3-other.json") && bad[1].1.contains("resourceType"),
        "{bad:?}"
    );
    assert_eq!(
        count(&d, "location:C-bong"),
        count(&d, "location:C-bong AND *")
    );
    assert!(count(&d, "*") > 0);
}

/// A store from before addresses other than phone numbers were look-up
/// keys: its next open adds them (merged with what a key already holds),
/// once, so a reply from such an address finds its worker.
#[test]
fn a_store_without_address_keys_gets_them_at_its_next_open() {
    let engine: Arc<dyn Engine> = Arc::new(MemoryEngine::new());
    let d = Directory::open(Arc::clone(&engine)).unwrap();
    let on_telegram = |id: &str, chat: &str| IncomingContact {
        telecoms: vec![Telecom {
            system: "telegram".into(),
            value: chat.into(),
            ..Default::default()
        }],
        ..worker(id, "", "nurse", "phebe")
    };
    d.import(
        "ihris",
        "LR",
        Incoming {
            contacts: vec![
                on_telegram("1", "chat-1"),
                on_telegram("2", "chat-shared"),
                on_telegram("3", "chat-shared"),
                worker("4", "0770000004", "nurse", "phebe"),
            ],
            ..Default::default()
        },
    )
    .unwrap();
    let found = |d: &Directory, chat: &str| -> Vec<u32> { d.numbers_at("telegram", chat).unwrap() };
    let (one, shared) = (found(&d, "chat-1"), found(&d, "chat-shared"));
    assert_eq!((one.len(), shared.len()), (1, 2));
    drop(d);
    // The old store: no address keys, no mark; one shared key holds one
    // of its two workers (as a key written by hand or half-way might).
    let mut old = Batch::new();
    old.delete(Cf::Directory, key(PHONE, "telegram:chat-1"));
    old.put(
        Cf::Directory,
        key(PHONE, "telegram:chat-shared"),
        numbers_to(&shared[..1]),
    );
    old.delete(Cf::Directory, ADDRESS_KEYS.to_vec());
    engine.write(old).unwrap();

    let d = Directory::open(Arc::clone(&engine)).unwrap();
    assert_eq!(found(&d, "chat-1"), one);
    let mut got = found(&d, "chat-shared");
    got.sort();
    assert_eq!(got, shared);
    assert!(engine.get(Cf::Directory, ADDRESS_KEYS).unwrap().is_some());
}
