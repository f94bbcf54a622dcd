//! A contact as the directory keeps it: what each source says of the
//! person (a contact merged from iHRIS and OpenMRS has two parts), plus
//! what belongs to the person rather than to a source (opt-out).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::audience::Recipient;

/// A health worker (or client) the broker can message.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    /// The contact's dense number: its position in every posting list.
    pub number: u32,
    /// What each source says, in the order they first named the contact.
    pub parts: Vec<Part>,
    /// Set when the contact asked not to be messaged: never selected again.
    pub opted_out: Option<OptOut>,
}

impl crate::store::Versioned for Contact {
    const VERSION: u8 = 1;
}

/// One source's view of a contact.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Part {
    /// The sync source or import it came from (`ihris`, `import`).
    pub source: String,
    /// The source resource, `Practitioner/123`.
    pub resource: String,
    /// `meta.versionId` and `meta.lastUpdated`, where the source gave them.
    pub version_id: Option<String>,
    pub last_updated: Option<String>,
    pub name: String,
    /// E.164.
    pub phone: Option<String>,
    /// Other addresses by kind: `whatsapp`, `telegram`, `messenger`, `email`.
    pub addresses: BTreeMap<String, String>,
    /// BCP 47, preferred first.
    pub languages: Vec<String>,
    /// Roles or cadres, lower case.
    pub roles: Vec<String>,
    /// `Location/…` where the contact works.
    pub facilities: Vec<String>,
    /// `Organization/…`.
    pub organizations: Vec<String>,
    /// `false` for a retired or inactive record.
    pub active: bool,
    /// What could not be used (an invalid phone number), with the reason.
    pub problems: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptOut {
    pub at_ms: u64,
    /// How: `STOP by sms`, `operator`.
    pub via: String,
}

impl Contact {
    /// The first name any source gives.
    pub fn name(&self) -> &str {
        self.parts
            .iter()
            .map(|p| p.name.as_str())
            .find(|n| !n.is_empty())
            .unwrap_or("")
    }

    /// The phone number of the first source that has one.
    pub fn phone(&self) -> Option<&str> {
        self.parts.iter().find_map(|p| p.phone.as_deref())
    }

    /// Addresses by kind; the first source naming a kind wins.
    pub fn addresses(&self) -> BTreeMap<&str, &str> {
        let mut out = BTreeMap::new();
        for p in &self.parts {
            for (k, v) in &p.addresses {
                out.entry(k.as_str()).or_insert(v.as_str());
            }
        }
        out
    }

    pub fn language(&self) -> Option<&str> {
        self.parts
            .iter()
            .find_map(|p| p.languages.first().map(String::as_str))
    }

    fn union<'a>(&'a self, f: impl Fn(&'a Part) -> &'a [String]) -> Vec<&'a str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.parts {
            for v in f(p) {
                if !out.contains(&v.as_str()) {
                    out.push(v);
                }
            }
        }
        out
    }

    pub fn roles(&self) -> Vec<&str> {
        self.union(|p| &p.roles)
    }

    pub fn facilities(&self) -> Vec<&str> {
        self.union(|p| &p.facilities)
    }

    pub fn organizations(&self) -> Vec<&str> {
        self.union(|p| &p.organizations)
    }

    /// Active in at least one source.
    pub fn active(&self) -> bool {
        self.parts.iter().any(|p| p.active)
    }

    /// May be selected: active and not opted out.
    pub fn selectable(&self) -> bool {
        self.active() && self.opted_out.is_none()
    }

    /// The posting lists the contact is in (its groups are kept apart, by
    /// the groups themselves).
    pub fn postings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.selectable() {
            out.push(ACTIVE.to_string());
        }
        if self.opted_out.is_some() {
            out.push(OPTED_OUT.to_string());
        }
        for r in self.roles() {
            out.push(format!("role:{r}"));
        }
        for f in self.facilities() {
            out.push(format!("facility:{f}"));
        }
        for o in self.organizations() {
            out.push(format!("org:{o}"));
        }
        if let Some(l) = self.language() {
            out.push(format!("lang:{}", primary_language(l)));
        }
        if self.phone().is_some() {
            out.push("addr:tel".into());
        }
        for kind in self.addresses().keys() {
            out.push(format!("addr:{kind}"));
        }
        if self.parts.iter().any(|p| !p.problems.is_empty()) {
            out.push(PROBLEMS.to_string());
        }
        out.sort();
        out.dedup();
        out
    }

    /// How dispatch sees the contact: addresses keyed by kind, which is
    /// the channel name for channels named after their network
    /// (`whatsapp`, `telegram`); every other channel uses the phone number.
    pub fn recipient(&self) -> Recipient {
        Recipient {
            phone: self.phone().map(str::to_string),
            addresses: self
                .addresses()
                .into_iter()
                .filter(|(k, _)| *k != "email")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            not_on: Vec::new(),
            language: self.language().map(str::to_string),
        }
    }
}

/// Active and not opted out.
pub const ACTIVE: &str = "active";
pub const OPTED_OUT: &str = "opted-out";
/// Some source gave something unusable (an invalid phone number).
pub const PROBLEMS: &str = "quality:problems";

/// `fr` for `fr-LR`, lower case.
pub fn primary_language(tag: &str) -> String {
    tag.split(['-', '_'])
        .next()
        .unwrap_or(tag)
        .to_ascii_lowercase()
}
