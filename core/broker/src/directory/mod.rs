//! The health-worker directory: contacts synced from a ministry's systems
//! (FHIR R4: iHRIS, OpenMRS, any R4 server) or imported, the location
//! hierarchy, groups, and audience selectors over them.
//!
//! The directory is a second user of the storage engine, beside the
//! delivery queues: its own key spaces (`contacts`, `directory`, `frozen`)
//! through the same [`Engine`] boundary. Each contact has a dense number;
//! every indexed value (role, facility, organization, language, address
//! kind, group, and `active`) keeps a compressed bitmap of contact numbers
//! (`roaring`), held in memory and written back with each import. A
//! selector ([`selector`]) is set algebra over those bitmaps; a location
//! term is the union of the bitmaps of every facility and organization
//! inside that place, read from the location tree at the time of the query
//! (so a tree that changes never needs contacts re-indexed).
//!
//! - [`contact`]: the contact record, one part per source.
//! - [`import`]: mapped FHIR resources into the directory: phone numbers,
//!   merging, the location tree, groups; per-entry reports.
//! - [`sync`]: FHIR R4 sources, pushed documents and `mhero import`.
//!
//! At submit a selector's result is frozen with the campaign (the
//! `frozen` key space): the audience cursor walks that bitmap in order
//! (position = rank), so a restart resumes at the persisted position and
//! a fallback finds a recipient by position. A contact who opts out after
//! the freeze is withheld when the fan-out reaches them.

pub mod config;
pub mod contact;
pub mod fhir;
pub mod generate;
pub mod import;
pub mod selector;
pub mod sync;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use mhero_proto::CampaignId;
use parking_lot::RwLock;
use roaring::{MultiOps, RoaringBitmap};
use serde::{Deserialize, Serialize};

pub use config::{Auth, DirectoryConfig, SourceConfig};
pub use contact::{Contact, OptOut, Part};
pub use fhir::{SyncMark, SyncReport, Syncer};
pub use import::{ImportReport, Incoming, IncomingContact, IncomingGroup, IncomingPlace, Telecom};
pub use selector::{Expr, Field, ParseError};

use crate::audience::{AudienceCursor, AudienceSource, Member, Recipient};
use crate::error::{Error, Result};
use crate::store::{Batch, Cf, Engine};

// `directory` key prefixes.
const POSTING: u8 = b'p';
const PLACE: u8 = b'l';
const GROUP: u8 = b'g';
const IDENTITY: u8 = b's';
const PHONE: u8 = b't';
const MARK: u8 = b'm';
const NEXT: &[u8] = b"Nnext";
/// Present once every contact's addresses other than phone numbers are
/// look-up keys (`kind:address`, as imports write them): a store made
/// before such keys existed gets them at its next open.
const ADDRESS_KEYS: &[u8] = b"Uaddress-keys";
/// Contacts read per page while adding look-up keys at open.
#[cfg(not(test))]
const ADDRESS_KEYS_BATCH: usize = 10_000;
#[cfg(test)]
const ADDRESS_KEYS_BATCH: usize = 2;

fn key(prefix: u8, rest: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + rest.len());
    k.push(prefix);
    k.extend_from_slice(rest.as_bytes());
    k
}

/// `s | source \0 resource`: the contact a source's resource became.
fn identity_key(source: &str, resource: &str) -> Vec<u8> {
    let mut k = key(IDENTITY, source);
    k.push(0);
    k.extend_from_slice(resource.as_bytes());
    k
}

fn contact_key(number: u32) -> [u8; 4] {
    number.to_be_bytes()
}

fn encode_bitmap(b: &RoaringBitmap) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.serialized_size());
    b.serialize_into(&mut out)
        .expect("writing into a Vec cannot fail");
    out
}

fn decode_bitmap(bytes: &[u8], what: &str) -> Result<RoaringBitmap> {
    RoaringBitmap::deserialize_from(bytes).map_err(|e| Error::BadRecord {
        cf: "directory",
        key: what.to_string(),
        message: e.to_string(),
    })
}

fn bad(cf: &'static str, key: impl Into<String>, message: impl Into<String>) -> Error {
    Error::BadRecord {
        cf,
        key: key.into(),
        message: message.into(),
    }
}

/// A place in the location hierarchy.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Place {
    pub name: String,
    pub parent: Option<String>,
    pub kind: Option<String>,
}

impl crate::store::Versioned for Place {
    const VERSION: u8 = 1;
}

/// A group: a FHIR `Group` (its members are replaced when it is synced
/// again) or one a mapper derives, such as a cadre (it only gains members).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub name: String,
    pub source: String,
    /// Member resources as the source names them.
    pub members: Vec<String>,
    /// Members not (yet) in the directory.
    pub unresolved: Vec<String>,
    pub derived: bool,
}

impl crate::store::Versioned for GroupRecord {
    const VERSION: u8 = 1;
}

/// The in-memory indexes.
#[derive(Default)]
pub(crate) struct State {
    /// `role:nurse`, `facility:Location/f1`, `group:Group/g`, `active`…
    pub postings: HashMap<String, RoaringBitmap>,
    pub places: HashMap<String, Place>,
    pub children: HashMap<String, Vec<String>>,
    pub groups: HashMap<String, GroupRecord>,
    /// Lower-case group name → group id.
    pub group_names: HashMap<String, String>,
    pub next: u32,
}

impl State {
    fn posting(&self, key: &str) -> Option<&RoaringBitmap> {
        self.postings.get(key)
    }

    pub(crate) fn set_parent(&mut self, id: &str, parent: Option<String>) {
        let old = self.places.get(id).and_then(|p| p.parent.clone());
        if old == parent {
            return;
        }
        if let Some(old) = old
            && let Some(c) = self.children.get_mut(&old)
        {
            c.retain(|x| x != id);
        }
        if let Some(p) = &parent {
            self.children
                .entry(p.clone())
                .or_default()
                .push(id.to_string());
        }
        self.places.entry(id.to_string()).or_default().parent = parent;
    }

    /// The place and every place inside it.
    fn subtree<'a>(&'a self, root: &'a str) -> Vec<&'a str> {
        let mut seen: HashSet<&'a str> = HashSet::new();
        let mut out = Vec::new();
        let mut stack = vec![root];
        while let Some(id) = stack.pop() {
            if !seen.insert(id) {
                continue;
            }
            out.push(id);
            if let Some(c) = self.children.get(id) {
                stack.extend(c.iter().map(String::as_str));
            }
        }
        out
    }

    /// The enclosing places of `id`, nearest first, `id` included.
    pub fn ancestry(&self, id: &str) -> Vec<String> {
        let mut out = vec![id.to_string()];
        let mut next = self.places.get(id).and_then(|p| p.parent.clone());
        while let Some(p) = next {
            if out.contains(&p) || out.len() > 64 {
                break;
            }
            next = self.places.get(&p).and_then(|x| x.parent.clone());
            out.push(p);
        }
        out
    }

    fn active(&self) -> RoaringBitmap {
        self.posting(contact::ACTIVE).cloned().unwrap_or_default()
    }

    /// A term's contacts (any state), and whether the value is known.
    fn term(&self, field: Field, value: &str) -> (RoaringBitmap, bool) {
        let typed = |default: &str| {
            if value.contains('/') {
                value.to_string()
            } else {
                format!("{default}/{value}")
            }
        };
        let one = |k: String| match self.posting(&k) {
            Some(b) => (b.clone(), true),
            None => (RoaringBitmap::new(), false),
        };
        match field {
            Field::Role => one(format!("role:{}", value.to_lowercase())),
            Field::Lang => one(format!("lang:{}", contact::primary_language(value))),
            Field::Has => {
                let kind = value.to_ascii_lowercase();
                let kind = match kind.as_str() {
                    "phone" | "sms" | "tel" => "tel",
                    k => k,
                };
                one(format!("addr:{kind}"))
            }
            Field::Facility => one(format!("facility:{}", typed("Location"))),
            Field::Org => one(format!("org:{}", typed("Organization"))),
            Field::Location => {
                let root = typed("Location");
                let mut lists: Vec<&RoaringBitmap> = Vec::new();
                let mut key = String::new();
                for place in self.subtree(&root) {
                    for kind in ["facility:", "org:"] {
                        key.clear();
                        key.push_str(kind);
                        key.push_str(place);
                        if let Some(b) = self.posting(&key) {
                            lists.push(b);
                        }
                    }
                }
                // One multi-way union, not one merge per facility.
                let known = self.places.contains_key(&root) || !lists.is_empty();
                (lists.union(), known)
            }
            Field::Group => {
                let id = [value.to_string(), typed("Group")]
                    .into_iter()
                    .find(|id| self.groups.contains_key(id))
                    .or_else(|| self.group_names.get(&value.to_lowercase()).cloned());
                match id {
                    Some(id) => one(format!("group:{id}")),
                    None => (RoaringBitmap::new(), false),
                }
            }
        }
    }

    /// The contacts `e` names among `active`, and the terms nothing matched.
    fn eval(&self, e: &Expr, active: &RoaringBitmap, unknown: &mut Vec<String>) -> RoaringBitmap {
        match e {
            Expr::All => active.clone(),
            Expr::Term(field, value) => {
                let (b, known) = self.term(*field, value);
                if !known {
                    unknown.push(e.to_string());
                }
                b & active
            }
            Expr::Not(inner) => active - self.eval(inner, active, unknown),
            Expr::Or(es) => {
                let mut out = RoaringBitmap::new();
                for e in es {
                    out |= self.eval(e, active, unknown);
                }
                out
            }
            Expr::And(es) => {
                // Positive terms intersect first (smallest first); negated
                // ones are then subtracted, without complementing them.
                let mut pos: Vec<RoaringBitmap> = Vec::new();
                let mut neg: Vec<RoaringBitmap> = Vec::new();
                for e in es {
                    match e {
                        Expr::Not(inner) => neg.push(self.eval(inner, active, unknown)),
                        e => pos.push(self.eval(e, active, unknown)),
                    }
                }
                pos.sort_by_key(RoaringBitmap::len);
                let mut out = match pos.split_first() {
                    Some((first, rest)) => {
                        let mut out = first.clone();
                        for b in rest {
                            out &= b;
                        }
                        out
                    }
                    None => active.clone(),
                };
                for b in neg {
                    out -= b;
                }
                out
            }
        }
    }

    /// Contacts a channel reaches: the way dispatch routes (an address of
    /// the channel's own name, else the phone number).
    fn reach(&self, channel: &str) -> RoaringBitmap {
        let mut out = self.posting("addr:tel").cloned().unwrap_or_default();
        if channel != "tel"
            && channel != "email"
            && let Some(b) = self.posting(&format!("addr:{channel}"))
        {
            out |= b;
        }
        out
    }
}

/// What a selector would reach, before anything is sent.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Count {
    /// Contacts selected (active, not opted out).
    pub selected: u64,
    /// Of those, how many each channel would carry first, in the
    /// preference order given.
    pub by_channel: Vec<(String, u64)>,
    /// Selected contacts with no address on any of the channels.
    pub unreachable: u64,
    /// Terms that matched no value the directory knows (a typo, or a
    /// place with nobody in it).
    pub unknown_terms: Vec<String>,
}

/// mHero's data-quality view of the directory: what the ministry's
/// registries should fix.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quality {
    /// One number on several contacts: `(number, [source:resource…])`.
    pub shared_numbers: Vec<(String, Vec<String>)>,
    /// Active contacts with no address at all: `source:resource`.
    pub unreachable: Vec<String>,
    /// Contacts a source gave something unusable for, with what.
    pub problems: Vec<(String, Vec<String>)>,
    /// Totals (the lists stop at the limit asked).
    pub shared_numbers_total: u64,
    pub unreachable_total: u64,
    pub problems_total: u64,
}

/// The directory's figures.
#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Summary {
    pub contacts: u64,
    pub active: u64,
    pub opted_out: u64,
    pub places: usize,
    pub groups: usize,
    /// Contacts with a phone number, and with no address at all.
    pub with_phone: u64,
    pub unreachable: u64,
}

pub struct Directory {
    engine: Arc<dyn Engine>,
    state: RwLock<State>,
}

impl Directory {
    /// Loads the indexes from the store (a scan of the `directory` key
    /// space: posting lists, places, groups).
    pub fn open(engine: Arc<dyn Engine>) -> Result<Self> {
        let mut state = State::default();
        let mut failure = None;
        engine.scan(Cf::Directory, &[], &[0xff], &mut |k, v| {
            let text = || String::from_utf8_lossy(&k[1..]).into_owned();
            let step = (|| -> Result<()> {
                match k.first() {
                    Some(&POSTING) => {
                        state
                            .postings
                            .insert(text(), decode_bitmap(v, &String::from_utf8_lossy(k))?);
                    }
                    Some(&PLACE) => {
                        let p: Place = crate::store::decode_value(v)
                            .map_err(|m| bad("directory", String::from_utf8_lossy(k), m))?;
                        let id = text();
                        if let Some(parent) = &p.parent {
                            state
                                .children
                                .entry(parent.clone())
                                .or_default()
                                .push(id.clone());
                        }
                        state.places.insert(id, p);
                    }
                    Some(&GROUP) => {
                        let g: GroupRecord = crate::store::decode_value(v)
                            .map_err(|m| bad("directory", String::from_utf8_lossy(k), m))?;
                        state.group_names.insert(g.name.to_lowercase(), text());
                        state.groups.insert(text(), g);
                    }
                    _ if k == NEXT => {
                        state.next = v
                            .try_into()
                            .map(u32::from_be_bytes)
                            .map_err(|_| bad("directory", "next", "not 4 bytes"))?;
                    }
                    _ => {}
                }
                Ok(())
            })();
            match step {
                Ok(()) => Ok(true),
                Err(e) => {
                    failure = Some(e);
                    Ok(false)
                }
            }
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        if engine.get(Cf::Directory, ADDRESS_KEYS)?.is_none() {
            index_addresses(&*engine)?;
        }
        Ok(Self {
            engine,
            state: RwLock::new(state),
        })
    }

    pub(crate) fn engine(&self) -> &Arc<dyn Engine> {
        &self.engine
    }

    /// Parses a selector; the error names the field `audience.selector`.
    pub fn parse(selector: &str) -> Result<Expr> {
        selector::parse(selector)
            .map_err(|e| Error::field_invalid("audience.selector", e.to_string()))
    }

    /// The contacts a selector names now (active, not opted out).
    pub fn select(&self, selector: &str) -> Result<(RoaringBitmap, Vec<String>)> {
        let expr = Self::parse(selector)?;
        let state = self.state.read();
        let active = state.active();
        let mut unknown = Vec::new();
        let b = state.eval(&expr, &active, &mut unknown);
        Ok((b, unknown))
    }

    /// How many a selector reaches, and on which of `channels` (in
    /// preference order; none: any address at all).
    pub fn count(&self, selector: &str, channels: &[String]) -> Result<Count> {
        let expr = Self::parse(selector)?;
        let state = self.state.read();
        let active = state.active();
        let mut unknown_terms = Vec::new();
        let selected = state.eval(&expr, &active, &mut unknown_terms);
        let mut remaining = selected.clone();
        let mut by_channel = Vec::new();
        if channels.is_empty() {
            for (k, b) in &state.postings {
                if k.starts_with("addr:") {
                    remaining -= b;
                }
            }
        }
        for c in channels {
            let reach = state.reach(c);
            by_channel.push((c.clone(), remaining.intersection_len(&reach)));
            remaining -= reach;
        }
        Ok(Count {
            selected: selected.len(),
            by_channel,
            unreachable: remaining.len(),
            unknown_terms,
        })
    }

    /// One contact by number.
    pub fn contact(&self, number: u32) -> Result<Option<Contact>> {
        self.engine
            .get(Cf::Contacts, &contact_key(number))?
            .map(|v| decode_contact(number, &v))
            .transpose()
    }

    /// A contact by number (`42` or `#42`), phone number (`+231…`), or
    /// source resource (`Practitioner/123`, or `source:Practitioner/123`).
    pub fn find(&self, query: &str) -> Result<Option<Contact>> {
        let q = query.trim();
        if let Ok(n) = q.trim_start_matches('#').parse::<u32>() {
            return self.contact(n);
        }
        if q.starts_with('+') {
            let numbers = self.phone_numbers(q)?;
            return match numbers.first() {
                Some(n) => self.contact(*n),
                None => Ok(None),
            };
        }
        if let Some((source, resource)) = q.split_once(':')
            && let Some(v) = self
                .engine
                .get(Cf::Directory, &identity_key(source, resource))?
        {
            return self.contact(number_from(&v)?);
        }
        // Any source: the identity keys are `s | source \0 resource`.
        let mut found = None;
        self.engine
            .scan(Cf::Directory, &[IDENTITY], &[IDENTITY + 1], &mut |k, v| {
                let resource = k.iter().position(|b| *b == 0).map(|i| &k[i + 1..]);
                if resource == Some(q.as_bytes()) {
                    found = Some(v.to_vec());
                    return Ok(false);
                }
                Ok(true)
            })?;
        match found {
            Some(v) => self.contact(number_from(&v)?),
            None => Ok(None),
        }
    }

    /// The contact a message from `from` on `channel` came from: its
    /// address of that kind (a Telegram chat id on channel `telegram`),
    /// else its phone number (`231770…` and `+231770…` alike). The first
    /// contact when several share the number.
    pub fn by_address(&self, channel: &str, from: &str) -> Result<Option<Contact>> {
        match self.numbers_at(channel, from)?.first() {
            Some(n) => self.contact(*n),
            None => Ok(None),
        }
    }

    /// The contacts at `address` on `channel`, found as [`Self::by_address`]
    /// finds them.
    fn numbers_at(&self, channel: &str, address: &str) -> Result<Vec<u32>> {
        let address = address.trim();
        let found = self.phone_numbers(&address_key(channel, address))?;
        if !found.is_empty() {
            return Ok(found);
        }
        let digits = address.strip_prefix('+').unwrap_or(address);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Ok(Vec::new());
        }
        self.phone_numbers(&format!("+{digits}"))
    }

    pub(crate) fn phone_numbers(&self, phone: &str) -> Result<Vec<u32>> {
        Ok(self
            .engine
            .get(Cf::Directory, &key(PHONE, phone))?
            .map(|v| numbers_from(&v))
            .unwrap_or_default())
    }

    /// The places enclosing `id`, nearest first, with their names.
    pub fn ancestry(&self, id: &str) -> Vec<(String, String)> {
        let state = self.state.read();
        state
            .ancestry(id)
            .into_iter()
            .map(|p| {
                let name = state
                    .places
                    .get(&p)
                    .map(|x| x.name.clone())
                    .unwrap_or_default();
                (p, name)
            })
            .collect()
    }

    /// A place as someone named it: its id (`Location/F-12` or `F-12`),
    /// else its name without case (a facility preferred where several
    /// places share it).
    pub fn find_place(&self, given: &str) -> Option<String> {
        let state = self.state.read();
        let t = given.trim();
        for id in [t.to_string(), format!("Location/{t}")] {
            if state.places.contains_key(&id) {
                return Some(id);
            }
        }
        let mut named: Vec<(&String, &Place)> = state
            .places
            .iter()
            .filter(|(_, p)| !p.name.is_empty() && p.name.eq_ignore_ascii_case(t))
            .collect();
        named.sort_by_key(|(id, p)| (p.kind.as_deref() != Some("facility"), id.as_str()));
        named.first().map(|(id, _)| id.to_string())
    }

    /// `id` and the places enclosing it, nearest first, as the directory
    /// knows them (a place it has no record of comes with a default).
    pub fn places_up(&self, id: &str) -> Vec<(String, Place)> {
        let state = self.state.read();
        state
            .ancestry(id)
            .into_iter()
            .map(|p| {
                let place = state.places.get(&p).cloned().unwrap_or_default();
                (p, place)
            })
            .collect()
    }

    /// Every group, by id, with its members in the directory now.
    pub fn groups(&self) -> Vec<(String, GroupRecord, u64)> {
        let state = self.state.read();
        let mut out: Vec<(String, GroupRecord, u64)> = state
            .groups
            .iter()
            .map(|(id, g)| {
                let members = state
                    .posting(&format!("group:{id}"))
                    .map_or(0, RoaringBitmap::len);
                (id.clone(), g.clone(), members)
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The groups a contact is in.
    pub fn groups_of(&self, number: u32) -> Vec<(String, String)> {
        let state = self.state.read();
        let mut out: Vec<(String, String)> = state
            .groups
            .iter()
            .filter(|(id, _)| {
                state
                    .posting(&format!("group:{id}"))
                    .is_some_and(|b| b.contains(number))
            })
            .map(|(id, g)| (id.clone(), g.name.clone()))
            .collect();
        out.sort();
        out
    }

    pub fn summary(&self) -> Summary {
        let state = self.state.read();
        let len = |k: &str| state.posting(k).map_or(0, RoaringBitmap::len);
        let mut all = RoaringBitmap::new();
        let mut reachable = RoaringBitmap::new();
        for (k, b) in &state.postings {
            if k.starts_with("addr:") {
                reachable |= b;
            }
            if k == contact::ACTIVE
                || k == contact::OPTED_OUT
                || k.starts_with("addr:")
                || k.starts_with("role:")
                || k.starts_with("facility:")
            {
                all |= b;
            }
        }
        Summary {
            contacts: all.len(),
            active: len(contact::ACTIVE),
            opted_out: len(contact::OPTED_OUT),
            places: state.places.len(),
            groups: state.groups.len(),
            with_phone: len("addr:tel"),
            unreachable: (state.active() - &reachable).len(),
        }
    }

    /// Shared numbers, unreachable workers and unusable data, each list
    /// cut at `limit` (the totals are whole).
    pub fn quality(&self, limit: usize) -> Result<Quality> {
        let name = |c: &Contact| -> String {
            c.parts
                .iter()
                .map(|p| format!("{}:{}", p.source, p.resource))
                .collect::<Vec<_>>()
                .join(" + ")
        };
        let mut q = Quality::default();
        let mut shared = Vec::new();
        self.engine
            .scan(Cf::Directory, &[PHONE], &[PHONE + 1], &mut |k, v| {
                let numbers = numbers_from(v);
                if numbers.len() > 1 {
                    q.shared_numbers_total += 1;
                    if shared.len() < limit {
                        shared.push((String::from_utf8_lossy(&k[1..]).into_owned(), numbers));
                    }
                }
                Ok(true)
            })?;
        for (phone, numbers) in shared {
            let mut who = Vec::new();
            for n in numbers {
                if let Some(c) = self.contact(n)? {
                    who.push(name(&c));
                }
            }
            q.shared_numbers.push((phone, who));
        }
        let (unreachable, problems) = {
            let state = self.state.read();
            let mut reachable = RoaringBitmap::new();
            for (k, b) in &state.postings {
                if k.starts_with("addr:") {
                    reachable |= b;
                }
            }
            (
                state.active() - reachable,
                state
                    .posting(contact::PROBLEMS)
                    .cloned()
                    .unwrap_or_default(),
            )
        };
        q.unreachable_total = unreachable.len();
        for n in unreachable.iter().take(limit) {
            if let Some(c) = self.contact(n)? {
                q.unreachable.push(name(&c));
            }
        }
        q.problems_total = problems.len();
        for n in problems.iter().take(limit) {
            if let Some(c) = self.contact(n)? {
                let what = c
                    .parts
                    .iter()
                    .flat_map(|p| p.problems.iter().cloned())
                    .collect();
                q.problems.push((name(&c), what));
            }
        }
        Ok(q)
    }

    /// Marks a contact as opted out (or back in): selected again only once
    /// it opts back in. Durable before it returns.
    pub fn set_opted_out(&self, number: u32, opt_out: Option<OptOut>) -> Result<bool> {
        let mut state = self.state.write();
        let Some(mut c) = self.contact(number)? else {
            return Ok(false);
        };
        let before = c.postings();
        c.opted_out = opt_out;
        let after = c.postings();
        let mut batch = Batch::new();
        let dirty = repost(&mut state, number, &before, &after);
        batch.put(
            Cf::Contacts,
            contact_key(number).to_vec(),
            encode_contact(&c),
        );
        write_postings(&state, &dirty, &mut batch);
        self.engine.write(batch)?;
        Ok(true)
    }

    /// The audience frozen for a campaign.
    fn open_frozen(&self, campaign: CampaignId) -> Result<FrozenAudience> {
        let bytes = self
            .engine
            .get(Cf::Frozen, &crate::store::keys::campaign(campaign))?
            .ok_or_else(|| {
                Error::Invalid(format!(
                    "campaign {campaign}: its frozen audience is missing"
                ))
            })?;
        let bitmap = decode_bitmap(&bytes, &format!("frozen audience of {campaign}"))?;
        Ok(FrozenAudience {
            engine: Arc::clone(&self.engine),
            count: bitmap.len() as u32,
            bitmap,
        })
    }
}

impl AudienceSource for Directory {
    fn check(&self, selector: &str) -> Result<()> {
        Self::parse(selector).map(drop)
    }

    fn any_opted_out(&self) -> bool {
        self.state
            .read()
            .posting(contact::OPTED_OUT)
            .is_some_and(|b| !b.is_empty())
    }

    fn opted_out(&self, recipients: &[Recipient]) -> Result<Vec<Option<String>>> {
        let Some(out) = self
            .state
            .read()
            .posting(contact::OPTED_OUT)
            .filter(|b| !b.is_empty())
            .cloned()
        else {
            return Ok(vec![None; recipients.len()]);
        };
        let opted = |numbers: Vec<u32>| numbers.iter().any(|n| out.contains(*n));
        recipients
            .iter()
            .map(|r| {
                if let Some(phone) = &r.phone
                    && opted(self.phone_numbers(phone)?)
                {
                    return Ok(Some("the worker at this number opted out".to_string()));
                }
                for (channel, address) in &r.addresses {
                    if opted(self.numbers_at(channel, address)?) {
                        return Ok(Some(format!(
                            "the worker at this {channel} address opted out"
                        )));
                    }
                }
                Ok(None)
            })
            .collect()
    }

    fn freeze(&self, campaign: CampaignId, selector: &str) -> Result<u32> {
        let (b, _) = self.select(selector)?;
        let mut batch = Batch::new();
        batch.put(
            Cf::Frozen,
            crate::store::keys::campaign(campaign),
            encode_bitmap(&b),
        );
        self.engine.write(batch)?;
        Ok(b.len() as u32)
    }

    fn frozen(&self, campaign: CampaignId) -> Result<Box<dyn AudienceCursor>> {
        Ok(Box::new(self.open_frozen(campaign)?))
    }
}

/// Moves `number` from the posting lists `before` to `after`; the keys
/// that changed.
pub(crate) fn repost(
    state: &mut State,
    number: u32,
    before: &[String],
    after: &[String],
) -> Vec<String> {
    let mut dirty = Vec::new();
    for k in before {
        if !after.contains(k)
            && let Some(b) = state.postings.get_mut(k)
        {
            b.remove(number);
            dirty.push(k.clone());
        }
    }
    for k in after {
        if !before.contains(k) {
            state.postings.entry(k.clone()).or_default().insert(number);
            dirty.push(k.clone());
        }
    }
    dirty
}

/// Writes the named posting lists (an empty one is deleted).
pub(crate) fn write_postings<'a>(
    state: &State,
    keys: impl IntoIterator<Item = &'a String>,
    batch: &mut Batch,
) {
    for k in keys {
        match state.postings.get(k) {
            Some(b) if !b.is_empty() => batch.put(Cf::Directory, key(POSTING, k), encode_bitmap(b)),
            _ => batch.delete(Cf::Directory, key(POSTING, k)),
        }
    }
}

pub(crate) fn encode_contact(c: &Contact) -> Vec<u8> {
    crate::store::encode(c)
}

/// Gives every stored contact the look-up keys of all its addresses (a
/// store from before `kind:address` keys has only its phone numbers'),
/// then marks the store as done. Contacts are read a page at a time, each
/// page's keys merged into what the store holds and written before the
/// next is read, so memory stays bounded. Adding a number a key already
/// holds changes nothing, so a run cut short is simply run again.
fn index_addresses(engine: &dyn Engine) -> Result<()> {
    let mut from = 0u32;
    let mut added = 0usize;
    loop {
        let mut wanted: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        let (mut read, mut last) = (0usize, None);
        let mut failure = None;
        engine.scan(Cf::Contacts, &contact_key(from), &[0xff; 5], &mut |k, v| {
            let Ok(number) = <[u8; 4]>::try_from(k).map(u32::from_be_bytes) else {
                return Ok(true);
            };
            match decode_contact(number, v) {
                Ok(c) => {
                    for address in import::phones(&c) {
                        wanted.entry(address).or_default().push(number);
                    }
                }
                Err(e) => failure = Some(e),
            }
            (read, last) = (read + 1, Some(number));
            Ok(failure.is_none() && read < ADDRESS_KEYS_BATCH)
        })?;
        if let Some(e) = failure {
            return Err(e);
        }
        let mut batch = Batch::new();
        for (address, numbers) in wanted {
            let k = key(PHONE, &address);
            let mut held = engine
                .get(Cf::Directory, &k)?
                .map(|v| numbers_from(&v))
                .unwrap_or_default();
            let before = held.len();
            for n in numbers {
                if !held.contains(&n) {
                    held.push(n);
                }
            }
            if held.len() > before {
                added += 1;
                batch.put(Cf::Directory, k, numbers_to(&held));
            }
        }
        engine.write(batch)?;
        match last {
            Some(n) if read == ADDRESS_KEYS_BATCH && n < u32::MAX => from = n + 1,
            _ => break,
        }
    }
    let mut done = Batch::new();
    done.put(Cf::Directory, ADDRESS_KEYS.to_vec(), Vec::new());
    engine.write(done)?;
    if added > 0 {
        tracing::info!(
            keys = added,
            "Contacts' addresses became look-up keys (a store from before they were)."
        );
    }
    Ok(())
}

fn decode_contact(number: u32, bytes: &[u8]) -> Result<Contact> {
    crate::store::decode_value(bytes).map_err(|m| bad("contacts", number.to_string(), m))
}

fn number_from(v: &[u8]) -> Result<u32> {
    v.try_into()
        .map(u32::from_be_bytes)
        .map_err(|_| bad("directory", "identity", "not 4 bytes"))
}

fn numbers_from(v: &[u8]) -> Vec<u32> {
    v.chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn numbers_to(ns: &[u32]) -> Vec<u8> {
    ns.iter().flat_map(|n| n.to_be_bytes()).collect()
}

/// The look-up key of a contact's address of kind `kind` (phone
/// numbers are keyed as they are: `+…`).
pub(crate) fn address_key(kind: &str, address: &str) -> String {
    format!("{kind}:{address}")
}

/// A selector's result as frozen at submit, walked in contact-number order.
pub struct FrozenAudience {
    engine: Arc<dyn Engine>,
    bitmap: RoaringBitmap,
    count: u32,
}

impl AudienceCursor for FrozenAudience {
    fn len(&self) -> u32 {
        self.count
    }

    fn page(&self, from: u32, max: u32) -> Result<Vec<(u32, Member)>> {
        let Some(first) = self.bitmap.select(from) else {
            return Ok(Vec::new());
        };
        let numbers: Vec<u32> = self.bitmap.range(first..).take(max as usize).collect();
        let Some(&last) = numbers.last() else {
            return Ok(Vec::new());
        };
        let mut found: Vec<Option<Contact>> = vec![None; numbers.len()];
        // Dense selections are read with one scan; sparse ones by key.
        if u64::from(last - first) < 4 * numbers.len() as u64 {
            let mut j = 0;
            let upper = (u64::from(last) + 1).min(u64::from(u32::MAX));
            let mut failure = None;
            self.engine.scan(
                Cf::Contacts,
                &contact_key(first),
                &(upper as u32).to_be_bytes(),
                &mut |k, v| {
                    let Ok(n) = <[u8; 4]>::try_from(k).map(u32::from_be_bytes) else {
                        return Ok(true);
                    };
                    while j < numbers.len() && numbers[j] < n {
                        j += 1;
                    }
                    if j < numbers.len() && numbers[j] == n {
                        match decode_contact(n, v) {
                            Ok(c) => found[j] = Some(c),
                            Err(e) => {
                                failure = Some(e);
                                return Ok(false);
                            }
                        }
                    }
                    Ok(j < numbers.len())
                },
            )?;
            if let Some(e) = failure {
                return Err(e);
            }
            if last == u32::MAX
                && let Some(v) = self.engine.get(Cf::Contacts, &contact_key(last))?
            {
                *found.last_mut().expect("not empty") = Some(decode_contact(last, &v)?);
            }
        } else {
            for (slot, n) in found.iter_mut().zip(&numbers) {
                if let Some(v) = self.engine.get(Cf::Contacts, &contact_key(*n))? {
                    *slot = Some(decode_contact(*n, &v)?);
                }
            }
        }
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                let member = match c {
                    None => Member::Withheld("no longer in the directory".into()),
                    Some(c) if c.opted_out.is_some() => Member::Withheld("opted out".into()),
                    Some(c) if !c.active() => {
                        Member::Withheld("no longer active in the directory".into())
                    }
                    Some(c) => Member::Reach(c.recipient()),
                };
                (from + i as u32, member)
            })
            .collect())
    }
}

/// A directory's sync sources' progress marks, by source name.
pub(crate) fn mark_key(source: &str) -> Vec<u8> {
    key(MARK, source)
}
