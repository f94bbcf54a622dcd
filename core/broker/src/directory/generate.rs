//! iHRIS-shaped FHIR R4 data, generated: a four-level location hierarchy
//! (country → county → district → facility), the Ministry of Health as
//! organization, practitioners with their PractitionerRoles, and groups;
//! with the noise real registries have (missing and malformed numbers, one
//! number on two records, retired workers). What the demo, the benchmarks
//! and the sync tests load; deterministic for a given seed.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The shape of a generated registry.
#[derive(Clone, Debug)]
pub struct Registry {
    pub practitioners: u32,
    /// Practitioners per Bundle page.
    pub page: u32,
    pub seed: u64,
    /// Missing, malformed and shared numbers (percent of practitioners);
    /// 0 for a clean registry.
    pub noise_percent: f64,
    /// Retired (inactive) practitioners, percent.
    pub retired_percent: f64,
}

pub const COUNTIES: [&str; 15] = [
    "bomi",
    "bong",
    "gbarpolu",
    "grand-bassa",
    "grand-cape-mount",
    "grand-gedeh",
    "grand-kru",
    "lofa",
    "margibi",
    "maryland",
    "montserrado",
    "nimba",
    "river-cess",
    "river-gee",
    "sinoe",
];
pub const DISTRICTS_PER_COUNTY: u32 = 6;
/// Roles with their share (percent) of the workforce.
pub const ROLES: [(&str, &str, u32); 6] = [
    ("nurse", "Registered Nurse", 35),
    ("chw", "Community Health Worker", 30),
    ("midwife", "Certified Midwife", 15),
    ("lab", "Laboratory Technician", 10),
    ("doctor", "Medical Doctor", 5),
    ("pharmacist", "Pharmacist", 5),
];

impl Registry {
    pub fn new(practitioners: u32) -> Self {
        Self {
            practitioners,
            page: 1000,
            seed: 2014,
            noise_percent: 0.0,
            retired_percent: 0.0,
        }
    }

    /// Facilities: one per 50 workers, at least one per district.
    pub fn facilities(&self) -> u32 {
        (self.practitioners / 50).max(COUNTIES.len() as u32 * DISTRICTS_PER_COUNTY)
    }

    /// `Location/D-<county>-<n>` of facility `f`.
    pub fn district_of(&self, f: u32) -> String {
        let d = f % (COUNTIES.len() as u32 * DISTRICTS_PER_COUNTY);
        format!(
            "Location/D-{}-{}",
            COUNTIES[(d / DISTRICTS_PER_COUNTY) as usize],
            d % DISTRICTS_PER_COUNTY
        )
    }

    /// The facility number of worker `i`.
    pub fn facility_of(&self, i: u32) -> u32 {
        // Spread, not clustered: worker i's facility is a hash of i.
        ((u64::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) % u64::from(self.facilities()))
            as u32
    }

    /// The role index of worker `i`.
    pub fn role_of(&self, i: u32) -> usize {
        let x = ((u64::from(i).wrapping_mul(0xd6e8_feb8_6659_fd93) >> 40) % 100) as u32;
        let mut acc = 0;
        ROLES
            .iter()
            .position(|(_, _, share)| {
                acc += share;
                x < acc
            })
            .unwrap_or(0)
    }

    /// The places: country, counties, districts, facilities.
    pub fn places_bundle(&self) -> Value {
        let mut entries = vec![location("LR", "Liberia", None, "country")];
        for c in COUNTIES {
            entries.push(location(
                &format!("C-{c}"),
                &title(c),
                Some("Location/LR"),
                "county",
            ));
            for d in 0..DISTRICTS_PER_COUNTY {
                entries.push(location(
                    &format!("D-{c}-{d}"),
                    &format!("{} district {d}", title(c)),
                    Some(&format!("Location/C-{c}")),
                    "district",
                ));
            }
        }
        for f in 0..self.facilities() {
            let district = self.district_of(f);
            entries.push(location(
                &format!("F-{f}"),
                &format!("Health facility {f}"),
                Some(&district),
                "facility",
            ));
        }
        entries.push(json!({
            "resourceType": "Organization", "id": "MOH",
            "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
            "name": "Ministry of Health", "active": true
        }));
        collection(entries)
    }

    /// Page `n` of practitioners with their roles (as a
    /// `_revinclude=PractitionerRole:practitioner` search returns them).
    pub fn practitioners_page(&self, n: u32) -> Value {
        let from = n * self.page;
        let to = (from + self.page).min(self.practitioners);
        let mut entries = Vec::with_capacity(2 * (to - from) as usize);
        for i in from..to {
            let (p, r) = self.practitioner(i);
            entries.push(p);
            entries.push(r);
        }
        collection(entries)
    }

    pub fn pages(&self) -> u32 {
        self.practitioners.div_ceil(self.page)
    }

    /// The groups: emergency responders (every 20th worker).
    pub fn groups_bundle(&self) -> Value {
        let members: Vec<Value> = (0..self.practitioners)
            .step_by(20)
            .map(|i| json!({"entity": {"reference": format!("Practitioner/P-{i}")}}))
            .collect();
        collection(vec![json!({
            "resourceType": "Group", "id": "ebola-responders",
            "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
            "type": "practitioner", "actual": true, "name": "Ebola responders",
            "member": members
        })])
    }

    /// Worker `i`: a Practitioner and its PractitionerRole.
    pub fn practitioner(&self, i: u32) -> (Value, Value) {
        let mut rng =
            SmallRng::seed_from_u64(self.seed ^ u64::from(i).wrapping_mul(0x2545_f491_4f6c_dd1d));
        let noise = rng.random_range(0.0..100.0) < self.noise_percent;
        let retired = rng.random_range(0.0..100.0) < self.retired_percent;
        let prefix = if i.is_multiple_of(2) { "077" } else { "088" };
        let mut telecom = vec![
            json!({"system": "phone", "value": format!("{prefix}{:07}", i % 10_000_000), "use": "mobile"}),
        ];
        if noise {
            match i % 3 {
                0 => telecom.clear(),
                1 => {
                    telecom[0] = json!({"system": "phone", "value": format!("077-{}", i % 97), "use": "mobile"})
                }
                // The previous worker's number: one number, two records.
                _ => {
                    let j = i.saturating_sub(1);
                    let prefix = if j.is_multiple_of(2) { "077" } else { "088" };
                    telecom[0] = json!({"system": "phone", "value": format!("{prefix}{:07}", j % 10_000_000), "use": "mobile"});
                }
            }
        }
        if i.is_multiple_of(4) && !telecom.is_empty() {
            telecom.push(json!({"system": "email", "value": format!("worker{i}@moh.gov.lr")}));
        }
        let language = if i.is_multiple_of(10) { "fr" } else { "en" };
        let (code, display, _) = ROLES[self.role_of(i)];
        let facility = self.facility_of(i);
        let updated = format!(
            "2024-{:02}-{:02}T{:02}:{:02}:00Z",
            1 + i % 12,
            1 + i % 28,
            i % 24,
            i % 60
        );
        let practitioner = json!({
            "resourceType": "Practitioner", "id": format!("P-{i}"),
            "meta": {"versionId": "1", "lastUpdated": updated},
            "active": !retired,
            "name": [{"use": "official", "family": format!("Family{}", i % 997), "given": [format!("Given{i}")]}],
            "telecom": telecom,
            "communication": [{"coding": [{"system": "urn:ietf:bcp:47", "code": language}]}]
        });
        let role = json!({
            "resourceType": "PractitionerRole", "id": format!("R-{i}"),
            "meta": {"versionId": "1", "lastUpdated": updated},
            "active": true,
            "practitioner": {"reference": format!("Practitioner/P-{i}")},
            "organization": {"reference": "Organization/MOH"},
            "location": [{"reference": format!("Location/F-{facility}")}],
            "code": [{"coding": [{"system": "http://ihris.org/fhir/CodeSystem/cadre", "code": code, "display": display}]}]
        });
        let _ = rng.random::<u8>();
        (practitioner, role)
    }
}

fn title(s: &str) -> String {
    s.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
                .unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn location(id: &str, name: &str, parent: Option<&str>, kind: &str) -> Value {
    let mut l = json!({
        "resourceType": "Location", "id": id,
        "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00Z"},
        "name": name, "status": "active",
        "type": [{"coding": [{"system": "http://ihris.org/fhir/CodeSystem/location-type", "code": kind}]}]
    });
    if let Some(p) = parent {
        l["partOf"] = json!({"reference": p});
    }
    l
}

fn collection(resources: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle", "type": "collection",
        "entry": resources.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>()
    })
}

/// A collection Bundle as a `batch` of `PUT`s (to load a server; each
/// entry stands alone, and servers take far larger batches than
/// transactions).
pub fn as_batch(bundle: &Value) -> Value {
    let mut b = as_transaction(bundle);
    b["type"] = json!("batch");
    b
}

/// A collection Bundle as a `transaction` of `PUT`s.
pub fn as_transaction(bundle: &Value) -> Value {
    let entries: Vec<Value> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let r = &e["resource"];
            let url = format!(
                "{}/{}",
                r["resourceType"].as_str().unwrap_or_default(),
                r["id"].as_str().unwrap_or_default()
            );
            let mut r = r.clone();
            if let Some(m) = r.as_object_mut() {
                m.remove("meta");
            }
            json!({"resource": r, "request": {"method": "PUT", "url": url}})
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_hierarchy_are_as_documented() {
        let r = Registry::new(10_000);
        let nurses = (0..10_000).filter(|i| r.role_of(*i) == 0).count();
        assert!((3200..3800).contains(&nurses), "{nurses}");
        assert_eq!(r.facilities(), 200);
        assert_eq!(r.district_of(7), "Location/D-bong-1");
        assert_eq!(
            r.district_of(90),
            "Location/D-bomi-0",
            "90 districts, then round again"
        );
        let page = r.practitioners_page(9);
        assert_eq!(page["entry"].as_array().unwrap().len(), 2000);
        assert_eq!(r.pages(), 10);
        assert_eq!(r.practitioner(3), r.practitioner(3), "deterministic");
    }
}
