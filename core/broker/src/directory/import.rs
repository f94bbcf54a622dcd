//! Mapped FHIR resources into the directory.
//!
//! Phone numbers are normalised to E.164 with the source's default country
//! (`phonenumber`); a number that does not parse is kept out and reported
//! on its contact, with the reason. The preferred number is the first valid
//! `phone`/`sms` telecom by rank, mobile before others.
//!
//! **Merging.** A resource a source sent before (`source` + resource id)
//! updates what that source said of its contact. A new resource joins the
//! contact that already has its phone number *from another source* (the
//! same worker in iHRIS and in OpenMRS); two resources of one source with
//! one number stay two contacts and are reported as duplicates (mHero's
//! data-quality use: the registry is wrong, not the broker). Otherwise it
//! is a new contact. A contact's name, phone and language come from the
//! first source that has them; its roles, facilities and organizations are
//! the union of every source's.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::contact::{Contact, Part};
use super::{
    Directory, GROUP, IDENTITY, NEXT, PHONE, PLACE, Place, State, contact_key, decode_contact,
    encode_contact, identity_key, key, number_from, numbers_from, numbers_to, repost,
    write_postings,
};
use crate::error::Result;
use crate::store::{Batch, Cf};

/// A contact point as the source has it (FHIR `ContactPoint`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Telecom {
    pub system: String,
    pub value: String,
    pub use_: Option<String>,
    pub rank: Option<u32>,
}

/// One person as a mapper read them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncomingContact {
    /// `Practitioner/123`.
    pub resource: String,
    pub name: String,
    pub telecoms: Vec<Telecom>,
    pub languages: Vec<String>,
    pub roles: Vec<String>,
    pub facilities: Vec<String>,
    pub organizations: Vec<String>,
    /// Enclosing places of the first facility, nearest first, as far as
    /// the document showed them.
    pub ancestry: Vec<String>,
    pub active: bool,
    pub version_id: Option<String>,
    pub last_updated: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncomingPlace {
    pub id: String,
    pub name: String,
    pub parent: Option<String>,
    pub kind: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct IncomingGroup {
    pub id: String,
    pub name: String,
    pub members: Vec<String>,
}

/// A mapped document.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Incoming {
    pub contacts: Vec<IncomingContact>,
    pub places: Vec<IncomingPlace>,
    pub groups: Vec<IncomingGroup>,
    /// Entries the mapper could not read.
    pub errors: Vec<EntryProblem>,
}

/// Something wrong with one entry or contact; the rest still import.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EntryProblem {
    /// Position in `Bundle.entry`, where known.
    pub index: Option<u32>,
    pub resource: Option<String>,
    pub message: String,
}

/// What an import did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ImportReport {
    pub created: u64,
    pub updated: u64,
    /// Resources that joined a contact another source had (same number).
    pub merged: u64,
    /// Resources seen again with the same version: nothing written.
    pub unchanged: u64,
    pub removed: u64,
    pub places: u64,
    pub groups: u64,
    /// Entries the mapper refused, and numbers that did not parse.
    pub problems: Vec<EntryProblem>,
    /// One number on two resources of one source: `(number, resources)`.
    pub duplicates: Vec<(String, Vec<String>)>,
    /// Active contacts imported with no usable address at all.
    pub unreachable: Vec<String>,
}

impl ImportReport {
    pub fn contacts(&self) -> u64 {
        self.created + self.updated + self.merged + self.unchanged
    }

    pub fn absorb(&mut self, other: ImportReport) {
        self.created += other.created;
        self.updated += other.updated;
        self.merged += other.merged;
        self.unchanged += other.unchanged;
        self.removed += other.removed;
        self.places += other.places;
        self.groups += other.groups;
        self.problems.extend(other.problems);
        self.duplicates.extend(other.duplicates);
        self.unreachable.extend(other.unreachable);
    }
}

/// Reads through the batch being built, so one document may name a
/// resource twice and see its own writes.
struct Overlay<'a> {
    dir: &'a Directory,
    writes: HashMap<(Cf, Vec<u8>), Option<Vec<u8>>>,
    order: Vec<(Cf, Vec<u8>)>,
}

impl<'a> Overlay<'a> {
    fn new(dir: &'a Directory) -> Self {
        Self {
            dir,
            writes: HashMap::new(),
            order: Vec::new(),
        }
    }

    fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match self.writes.get(&(cf, key.to_vec())) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.dir.engine.get(cf, key)?),
        }
    }

    fn put(&mut self, cf: Cf, key: Vec<u8>, value: Vec<u8>) {
        if self.writes.insert((cf, key.clone()), Some(value)).is_none() {
            self.order.push((cf, key));
        }
    }

    fn delete(&mut self, cf: Cf, key: Vec<u8>) {
        if self.writes.insert((cf, key.clone()), None).is_none() {
            self.order.push((cf, key));
        }
    }

    fn into_batch(mut self) -> Batch {
        let mut batch = Batch::new();
        for k in self.order {
            match self.writes.remove(&k) {
                Some(Some(v)) => batch.put(k.0, k.1, v),
                Some(None) => batch.delete(k.0, k.1),
                None => {}
            }
        }
        batch
    }

    fn contact(&self, number: u32) -> Result<Option<Contact>> {
        self.get(Cf::Contacts, &contact_key(number))?
            .map(|v| decode_contact(number, &v))
            .transpose()
    }
}

/// The source-independent part of a contact: phone chosen, addresses
/// sorted, problems named.
fn part(source: &str, c: &IncomingContact, region: Option<phonenumber::country::Id>) -> Part {
    let mut problems = Vec::new();
    let mut phones: Vec<&Telecom> = c
        .telecoms
        .iter()
        .filter(|t| matches!(t.system.as_str(), "phone" | "sms"))
        .collect();
    // Rank 1 first, then mobile numbers, then the order given.
    phones.sort_by_key(|t| {
        (
            t.rank.unwrap_or(u32::MAX),
            t.use_.as_deref() != Some("mobile"),
        )
    });
    let mut phone = None;
    for t in phones {
        match crate::phone::e164(&t.value, region) {
            Ok(n) if phone.is_none() => phone = Some(n),
            Ok(_) => {}
            Err(why) => problems.push(why),
        }
    }
    let mut addresses = BTreeMap::new();
    for t in &c.telecoms {
        let kind = t.system.to_ascii_lowercase();
        if !matches!(
            kind.as_str(),
            "whatsapp" | "telegram" | "messenger" | "email"
        ) {
            continue;
        }
        let value = t.value.trim();
        if value.is_empty() || value.len() > 256 || value.chars().any(char::is_control) {
            problems.push(format!(
                "the {kind} address {value:?} is empty, too long or not text"
            ));
            continue;
        }
        let value = if kind == "whatsapp" {
            match crate::phone::e164(value, region) {
                Ok(n) => n,
                Err(why) => {
                    problems.push(format!("whatsapp: {why}"));
                    continue;
                }
            }
        } else {
            value.to_string()
        };
        addresses.entry(kind).or_insert(value);
    }
    let mut roles: Vec<String> = Vec::new();
    for r in &c.roles {
        let r = r.trim().to_lowercase();
        if !r.is_empty() && !roles.contains(&r) {
            roles.push(r);
        }
    }
    Part {
        source: source.to_string(),
        resource: c.resource.clone(),
        version_id: c.version_id.clone(),
        last_updated: c.last_updated.clone(),
        name: c.name.trim().to_string(),
        phone,
        addresses,
        languages: c.languages.clone(),
        roles,
        facilities: c.facilities.clone(),
        organizations: c.organizations.clone(),
        active: c.active,
        problems,
    }
}

/// The contact's look-up keys: its phone numbers, and its other
/// addresses as `kind:address` (`telegram:5012…`), so a message from any
/// of them finds the contact.
pub(super) fn phones(c: &Contact) -> Vec<String> {
    let mut out: Vec<String> = c.parts.iter().filter_map(|p| p.phone.clone()).collect();
    for p in &c.parts {
        for (kind, address) in &p.addresses {
            if kind != "email" {
                out.push(super::address_key(kind, address));
            }
        }
    }
    out.sort();
    out.dedup();
    out
}

impl Directory {
    /// Imports one mapped document from `source`, whose phone numbers
    /// default to `country` (ISO 3166 alpha-2). Durable before it returns;
    /// every problem is in the report, and the rest is imported.
    pub fn import(&self, source: &str, country: &str, incoming: Incoming) -> Result<ImportReport> {
        let region = country.parse::<phonenumber::country::Id>().ok();
        let mut report = ImportReport {
            problems: incoming
                .errors
                .iter()
                .map(|e| EntryProblem {
                    index: e.index,
                    resource: e.resource.clone(),
                    message: e.message.clone(),
                })
                .collect(),
            ..Default::default()
        };
        let mut state = self.state.write();
        let mut ov = Overlay::new(self);
        let mut dirty: Vec<String> = Vec::new();
        let next_before = state.next;

        // Places first, so contacts' facilities find their ancestry.
        for p in &incoming.places {
            let place = Place {
                name: p.name.clone(),
                parent: p.parent.clone().filter(|x| x != &p.id),
                kind: p.kind.clone(),
            };
            state.set_parent(&p.id, place.parent.clone());
            state.places.insert(p.id.clone(), place.clone());
            ov.put(
                Cf::Directory,
                key(PLACE, &p.id),
                crate::store::encode(&place),
            );
            report.places += 1;
        }
        // What a document shows of a facility's ancestry fills parents the
        // directory does not know yet.
        for c in &incoming.contacts {
            for pair in c.ancestry.windows(2) {
                let (child, parent) = (&pair[0], &pair[1]);
                if child != parent && state.places.get(child).is_none_or(|p| p.parent.is_none()) {
                    state.set_parent(child, Some(parent.clone()));
                    let place = state.places.get(child).cloned().unwrap_or_default();
                    ov.put(
                        Cf::Directory,
                        key(PLACE, child),
                        crate::store::encode(&place),
                    );
                }
            }
        }

        for c in &incoming.contacts {
            let new = part(source, c, region);
            for why in &new.problems {
                report.problems.push(EntryProblem {
                    index: None,
                    resource: Some(c.resource.clone()),
                    message: why.clone(),
                });
            }
            let id_key = identity_key(source, &c.resource);
            let existing = ov
                .get(Cf::Directory, &id_key)?
                .map(|v| number_from(&v))
                .transpose()?;
            let (number, before) = match existing {
                Some(n) => (n, ov.contact(n)?),
                None => {
                    let mut joined = None;
                    if let Some(phone) = &new.phone {
                        let same: Vec<u32> = ov
                            .get(Cf::Directory, &key(PHONE, phone))?
                            .map(|v| numbers_from(&v))
                            .unwrap_or_default();
                        let mut twins = Vec::new();
                        for n in same {
                            if let Some(other) = ov.contact(n)? {
                                match other.parts.iter().find(|p| p.source == source) {
                                    Some(p) => twins.push(p.resource.clone()),
                                    None if joined.is_none() => joined = Some((n, other)),
                                    None => {}
                                }
                            }
                        }
                        if !twins.is_empty() && joined.is_none() {
                            twins.push(c.resource.clone());
                            report.duplicates.push((phone.clone(), twins));
                        }
                    }
                    match joined {
                        Some((n, other)) => (n, Some(other)),
                        None => {
                            let n = state.next;
                            state.next = n.checked_add(1).ok_or_else(|| {
                                crate::error::Error::Invalid("the directory is full".into())
                            })?;
                            (n, None)
                        }
                    }
                }
            };
            let mut contact = before.clone().unwrap_or(Contact {
                number,
                ..Default::default()
            });
            match contact
                .parts
                .iter_mut()
                .find(|p| p.source == source && p.resource == c.resource)
            {
                Some(old) => {
                    if *old == new {
                        report.unchanged += 1;
                        continue;
                    }
                    *old = new;
                    report.updated += 1;
                }
                None => {
                    if before.is_some() {
                        report.merged += 1;
                    } else {
                        report.created += 1;
                    }
                    contact.parts.push(new);
                }
            }
            if contact.selectable() && contact.phone().is_none() && contact.addresses().is_empty() {
                report.unreachable.push(c.resource.clone());
            }
            self.rewrite(
                &mut state,
                &mut ov,
                &mut dirty,
                before.as_ref(),
                Some(&contact),
            )?;
            ov.put(Cf::Directory, id_key, number.to_be_bytes().to_vec());
        }

        for g in &incoming.groups {
            self.import_group(&mut state, &mut ov, &mut dirty, source, g)?;
            report.groups += 1;
        }
        self.resolve_groups(&mut state, &mut ov, &mut dirty, source)?;

        if state.next != next_before {
            ov.put(
                Cf::Directory,
                NEXT.to_vec(),
                state.next.to_be_bytes().to_vec(),
            );
        }
        dirty.sort();
        dirty.dedup();
        let mut batch = ov.into_batch();
        write_postings(&state, &dirty, &mut batch);
        self.commit(&mut state, batch)?;
        Ok(report)
    }

    /// Removes what `source` said of `resource` (it was deleted there);
    /// a contact no source names any more leaves the directory.
    pub fn remove(&self, source: &str, resources: &[String]) -> Result<ImportReport> {
        let mut report = ImportReport::default();
        let mut state = self.state.write();
        let mut ov = Overlay::new(self);
        let mut dirty = Vec::new();
        for resource in resources {
            let id_key = identity_key(source, resource);
            let Some(n) = ov
                .get(Cf::Directory, &id_key)?
                .map(|v| number_from(&v))
                .transpose()?
            else {
                continue;
            };
            ov.delete(Cf::Directory, id_key);
            let Some(before) = ov.contact(n)? else {
                continue;
            };
            let mut after = before.clone();
            after
                .parts
                .retain(|p| !(p.source == source && &p.resource == resource));
            let after = (!after.parts.is_empty()).then_some(after);
            self.rewrite(
                &mut state,
                &mut ov,
                &mut dirty,
                Some(&before),
                after.as_ref(),
            )?;
            report.removed += 1;
        }
        dirty.sort();
        dirty.dedup();
        let mut batch = ov.into_batch();
        write_postings(&state, &dirty, &mut batch);
        self.commit(&mut state, batch)?;
        Ok(report)
    }

    /// Every resource `source` has given, for a full reconcile.
    pub fn resources_of(&self, source: &str) -> Result<Vec<String>> {
        let mut lower = super::key(IDENTITY, source);
        lower.push(0);
        let mut upper = super::key(IDENTITY, source);
        upper.push(1);
        let mut out = Vec::new();
        self.engine
            .scan(Cf::Directory, &lower, &upper, &mut |k, _| {
                out.push(String::from_utf8_lossy(&k[lower.len()..]).into_owned());
                Ok(true)
            })?;
        Ok(out)
    }

    /// Writes a contact's new record (or its removal) with its phone and
    /// posting-list changes.
    fn rewrite(
        &self,
        state: &mut State,
        ov: &mut Overlay<'_>,
        dirty: &mut Vec<String>,
        before: Option<&Contact>,
        after: Option<&Contact>,
    ) -> Result<()> {
        let number = before.or(after).map(|c| c.number).expect("a contact");
        let old_postings = before.map(Contact::postings).unwrap_or_default();
        let new_postings = after.map(Contact::postings).unwrap_or_default();
        dirty.extend(repost(state, number, &old_postings, &new_postings));
        let old_phones = before.map(phones).unwrap_or_default();
        let new_phones = after.map(phones).unwrap_or_default();
        for p in old_phones.iter().filter(|p| !new_phones.contains(p)) {
            let k = key(PHONE, p);
            let mut ns = ov
                .get(Cf::Directory, &k)?
                .map(|v| numbers_from(&v))
                .unwrap_or_default();
            ns.retain(|x| *x != number);
            if ns.is_empty() {
                ov.delete(Cf::Directory, k);
            } else {
                ov.put(Cf::Directory, k, numbers_to(&ns));
            }
        }
        for p in new_phones.iter().filter(|p| !old_phones.contains(p)) {
            let k = key(PHONE, p);
            let mut ns = ov
                .get(Cf::Directory, &k)?
                .map(|v| numbers_from(&v))
                .unwrap_or_default();
            if !ns.contains(&number) {
                ns.push(number);
            }
            ov.put(Cf::Directory, k, numbers_to(&ns));
        }
        match after {
            Some(c) => ov.put(
                Cf::Contacts,
                contact_key(number).to_vec(),
                encode_contact(c),
            ),
            None => {
                ov.delete(Cf::Contacts, contact_key(number).to_vec());
                // Out of every group too.
                for id in state.groups.keys() {
                    let k = format!("group:{id}");
                    if let Some(b) = state.postings.get_mut(&k)
                        && b.remove(number)
                    {
                        dirty.push(k);
                    }
                }
            }
        }
        Ok(())
    }

    fn import_group(
        &self,
        state: &mut State,
        ov: &mut Overlay<'_>,
        dirty: &mut Vec<String>,
        source: &str,
        g: &IncomingGroup,
    ) -> Result<()> {
        let derived = !g.id.starts_with("Group/");
        let mut record = state.groups.get(&g.id).cloned().unwrap_or_default();
        let posting = format!("group:{}", g.id);
        if !derived {
            // A FHIR Group is its whole membership.
            record.members.clear();
            record.unresolved.clear();
            state.postings.remove(&posting);
        }
        record.name = g.name.clone();
        record.source = source.to_string();
        record.derived = derived;
        let bitmap = state.postings.entry(posting.clone()).or_default();
        for m in &g.members {
            // A derived group (a cadre, tens of thousands strong) keeps its
            // members in its bitmap only.
            if !derived {
                record.members.push(m.clone());
            }
            match ov
                .get(Cf::Directory, &identity_key(source, m))?
                .map(|v| number_from(&v))
                .transpose()?
            {
                Some(n) => {
                    bitmap.insert(n);
                }
                None => {
                    if !record.unresolved.contains(m) {
                        record.unresolved.push(m.clone());
                    }
                }
            }
        }
        if let Some(old) = state
            .groups
            .get(&g.id)
            .map(|r| r.name.to_lowercase())
            .filter(|n| *n != g.name.to_lowercase())
        {
            state.group_names.remove(&old);
        }
        state
            .group_names
            .insert(g.name.to_lowercase(), g.id.clone());
        ov.put(
            Cf::Directory,
            key(GROUP, &g.id),
            crate::store::encode(&record),
        );
        state.groups.insert(g.id.clone(), record);
        dirty.push(posting);
        Ok(())
    }

    /// Members a group named before their contact arrived join it now.
    fn resolve_groups(
        &self,
        state: &mut State,
        ov: &mut Overlay<'_>,
        dirty: &mut Vec<String>,
        source: &str,
    ) -> Result<()> {
        let pending: Vec<String> = state
            .groups
            .iter()
            .filter(|(_, g)| g.source == source && !g.unresolved.is_empty())
            .map(|(id, _)| id.clone())
            .collect();
        for id in pending {
            let mut record = state.groups[&id].clone();
            let posting = format!("group:{id}");
            let mut joined = Vec::new();
            let mut still = Vec::new();
            for m in std::mem::take(&mut record.unresolved) {
                match ov
                    .get(Cf::Directory, &identity_key(source, &m))?
                    .map(|v| number_from(&v))
                    .transpose()?
                {
                    Some(n) => joined.push(n),
                    None => still.push(m),
                }
            }
            if joined.is_empty() {
                record.unresolved = still;
                state.groups.insert(id, record);
                continue;
            }
            state
                .postings
                .entry(posting.clone())
                .or_default()
                .extend(joined);
            record.unresolved = still;
            ov.put(
                Cf::Directory,
                key(GROUP, &id),
                crate::store::encode(&record),
            );
            state.groups.insert(id, record);
            dirty.push(posting);
        }
        Ok(())
    }

    /// Commits a batch; if it fails, the in-memory indexes are reloaded
    /// from the store, so they never show what was not written.
    fn commit(&self, state: &mut State, batch: Batch) -> Result<()> {
        match self.engine.write(batch) {
            Ok(()) => Ok(()),
            Err(e) => {
                if let Ok(fresh) = Directory::open(std::sync::Arc::clone(&self.engine)) {
                    *state = fresh.state.into_inner();
                }
                Err(e.into())
            }
        }
    }
}
