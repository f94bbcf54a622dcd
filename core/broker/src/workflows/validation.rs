//! Data validation: every worker a selector names is asked, through the
//! survey engine, to confirm or correct their facility and phone number.
//! The answers make a data-quality report (confirmed, corrected,
//! unreachable, no answer, by district); corrections go back to the FHIR
//! server the worker came from (`PUT` with `If-Match` on the version the
//! directory holds: a record changed there since is reported as a
//! conflict, not overwritten; a role the registry moved elsewhere since,
//! too; what the source already says is not written again), or into a
//! transaction Bundle for export.
//!
//! A reply from the number is itself the proof that the number works:
//! the phone question asks whether it is the worker's main one.
//!
//! State (the `workflows` key space):
//!
//! ```text
//! NV                         next validation id
//! V | validation             the validation: its survey, who could not be asked
//! w | validation | contact   what writing the worker's correction back did
//! ```

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use mhero_proto::Lane;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::questionnaire::Answer;
use super::survey::{Outgoing, SessionState, SurveyRecord, SurveySpec, Surveys};
use super::{key, member_key};
use crate::directory::sync::url_ref;
use crate::directory::{Auth, Contact, Directory, DirectoryConfig, Part, SourceConfig};
use crate::error::{Error, Result};
use crate::store::{Batch, Cf, Engine, Versioned, encode};

const NEXT: &[u8] = b"NV";
const VALIDATION: u8 = b'V';
const WRITTEN: u8 = b'w';

/// The questions' link ids.
const FACILITY_OK: &str = "facility-ok";
const FACILITY: &str = "facility";
const PHONE_OK: &str = "phone-ok";
const PHONE: &str = "phone";

/// A validation as asked for.
#[derive(Clone, Debug, PartialEq, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ValidationSpec {
    /// Who is asked: a directory selector (`*` for everyone).
    pub selector: String,
    /// Channels in preference order (default: the API's default channels).
    #[serde(default)]
    pub channels: Vec<String>,
    /// A question not answered within this many seconds is left
    /// unanswered (default 3 days).
    #[serde(default)]
    pub question_timeout_s: Option<u64>,
    /// No answer is taken after this time (ms since the epoch; default 14
    /// days after the start).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
}

/// A validation as kept.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationRecord {
    pub id: u64,
    /// The survey that asks.
    pub survey: u64,
    pub selector: String,
    pub created_ms: u64,
    /// Selected workers with no address on the validation's channels.
    pub no_address: Vec<u32>,
}

impl Versioned for ValidationRecord {
    const VERSION: u8 = 1;
}

/// Where one worker stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Said yes to their facility (and to their number, if they answered).
    Confirmed,
    /// Said no to either.
    Corrected,
    /// No address to ask them at, or nothing ever reached a gateway.
    Unreachable,
    /// Asked, never answered (before the deadline or the timeouts).
    NoAnswer,
    /// Still being asked.
    InProgress,
    /// Opted out on the way.
    OptedOut,
}

/// What a worker gave as the right value.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Correction {
    /// As they wrote it.
    pub given: String,
    /// What it was read as: a `Location/…` the directory knows, or an
    /// E.164 number. `None` when it could not be read.
    pub value: Option<String>,
    pub problem: Option<String>,
}

/// One worker's outcome.
#[derive(Clone, Debug, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Outcome {
    pub contact: u32,
    pub status: Status,
    pub facility: Option<Correction>,
    pub phone: Option<Correction>,
}

/// What writing one worker's corrections back did.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WriteBack {
    pub contact: u32,
    /// `written`, `conflict`, `failed`, `skipped`; in a preview,
    /// `planned` for what would be written.
    pub result: String,
    /// The resources written, with their new versions.
    pub written: Vec<String>,
    pub detail: Option<String>,
    pub at_ms: u64,
}

impl Versioned for WriteBack {
    const VERSION: u8 = 1;
}

/// Planned changes by worker (contact).
type ByWorker = BTreeMap<u32, Vec<Planned>>;

/// A change to send to a source: the resource as it will be, and the
/// version it must still have.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    pub contact: u32,
    pub source: String,
    /// `Practitioner/123`.
    pub reference: String,
    pub if_match: String,
    pub resource: Value,
}

pub struct Validations {
    engine: Arc<dyn Engine>,
    directory: Arc<Directory>,
    surveys: Arc<Surveys>,
    validations: RwLock<BTreeMap<u64, Arc<ValidationRecord>>>,
    ids: super::Ids,
}

impl Validations {
    pub fn open(
        engine: Arc<dyn Engine>,
        directory: Arc<Directory>,
        surveys: Arc<Surveys>,
    ) -> Result<Self> {
        let validations = super::load_all(&*engine, VALIDATION, |v: &ValidationRecord| v.id)?;
        let ids = super::Ids::open(&*engine, NEXT)?;
        Ok(Self {
            engine,
            directory,
            surveys,
            validations: RwLock::new(validations),
            ids,
        })
    }

    pub fn get(&self, id: u64) -> Option<Arc<ValidationRecord>> {
        self.validations.read().get(&id).cloned()
    }

    /// Newest first.
    pub fn list(&self) -> Vec<Arc<ValidationRecord>> {
        self.validations.read().values().rev().cloned().collect()
    }

    /// Starts a validation: its survey asks every selected worker with an
    /// address; those without one are kept as unreachable. Returns the
    /// first questions to send. Blocking.
    pub fn create(
        &self,
        spec: ValidationSpec,
        channels: Vec<String>,
        now: u64,
    ) -> Result<(Arc<ValidationRecord>, Vec<Outgoing>)> {
        let (selected, _) = self.directory.select(&spec.selector)?;
        let (survey, out) = self.surveys.create(
            SurveySpec {
                questionnaire: questionnaire(),
                selector: spec.selector.clone(),
                channels: channels.clone(),
                lane: Some(Lane::Normal),
                question_timeout_s: Some(spec.question_timeout_s.unwrap_or(3 * 86_400)),
                deadline_ms: Some(spec.deadline_ms.unwrap_or(now + 14 * 86_400_000)),
                thanks: Some(crate::dispatch::Body {
                    default: "Thank you: the Ministry of Health will update its records.".into(),
                    variants: [(
                        "fr".to_string(),
                        "Merci : le ministère de la Santé mettra ses registres à jour.".to_string(),
                    )]
                    .into(),
                    attachments: Vec::new(),
                }),
            },
            channels,
            now,
        )?;
        let asked: std::collections::HashSet<u32> = out.iter().map(|o| o.contact).collect();
        let no_address: Vec<u32> = selected.iter().filter(|n| !asked.contains(n)).collect();
        let id = self.ids.claim(&*self.engine)?;
        let record = ValidationRecord {
            id,
            survey: survey.id,
            selector: spec.selector,
            created_ms: now,
            no_address,
        };
        let mut batch = Batch::new();
        batch.put(Cf::Workflows, key(VALIDATION, id), encode(&record));
        self.engine.write(batch)?;
        let record = Arc::new(record);
        self.validations.write().insert(id, Arc::clone(&record));
        Ok((record, out))
    }

    pub fn survey_of(&self, v: &ValidationRecord) -> Result<Arc<SurveyRecord>> {
        self.surveys.get(v.survey).ok_or_else(|| {
            Error::Internal(format!("validation v{}: no survey s{}", v.id, v.survey))
        })
    }

    /// Every worker's outcome, in contact order. `reached(contact)` says
    /// whether anything was handed to a gateway for them since the
    /// validation began. Blocking.
    pub fn outcomes(
        &self,
        v: &ValidationRecord,
        country: &str,
        now: u64,
        reached: &dyn Fn(u32) -> bool,
    ) -> Result<Vec<Outcome>> {
        let survey = self.survey_of(v)?;
        let q = |link: &str| {
            survey
                .parsed
                .questions
                .iter()
                .position(|q| q.link_id == link)
                .map(|i| i as u32)
        };
        let (fo, f, po, p) = (q(FACILITY_OK), q(FACILITY), q(PHONE_OK), q(PHONE));
        let region = country.parse::<phonenumber::country::Id>().ok();
        let mut out: Vec<Outcome> = v
            .no_address
            .iter()
            .map(|&contact| Outcome {
                contact,
                status: Status::Unreachable,
                facility: None,
                phone: None,
            })
            .collect();
        let mut after = None;
        loop {
            let page = self.surveys.sessions(survey.id, after, 1000)?;
            let Some(last) = page.last().map(|s| s.contact) else {
                break;
            };
            for s in page {
                let answer = |i: Option<u32>| {
                    let i = i?;
                    s.answers
                        .iter()
                        .rev()
                        .find(|(k, _)| *k == i)
                        .map(|(_, a)| a.clone())
                };
                let facility_ok = answer(fo);
                let phone_ok = answer(po);
                let facility = match answer(f) {
                    Some(Answer::String(t)) => Some(self.read_facility(&t)),
                    _ => None,
                };
                let phone = match answer(p) {
                    Some(Answer::String(t)) => Some(read_phone(&t, region)),
                    _ => None,
                };
                let said_no = matches!(facility_ok, Some(Answer::Boolean(false)))
                    || matches!(phone_ok, Some(Answer::Boolean(false)));
                let open = s.state == SessionState::Active && now <= survey.deadline_ms;
                let status = match (s.state, open) {
                    (SessionState::Stopped, _) => Status::OptedOut,
                    _ if said_no && !open => Status::Corrected,
                    (_, true) => Status::InProgress,
                    _ if matches!(facility_ok, Some(Answer::Boolean(true))) => Status::Confirmed,
                    _ if s.answers.is_empty() && !reached(s.contact) => Status::Unreachable,
                    _ => Status::NoAnswer,
                };
                out.push(Outcome {
                    contact: s.contact,
                    status,
                    facility,
                    phone,
                });
            }
            after = Some(last);
        }
        out.sort_by_key(|o| o.contact);
        Ok(out)
    }

    /// A facility as a worker named it: a place's id (`F-12`,
    /// `Location/F-12`) or its name, without case.
    fn read_facility(&self, given: &str) -> Correction {
        let t = given.trim();
        let found = self.directory.find_place(t);
        Correction {
            given: t.to_string(),
            problem: found
                .is_none()
                .then(|| format!("no facility {t:?} in the directory")),
            value: found,
        }
    }

    /// What writing back did for each worker so far. Blocking.
    pub fn written(&self, v: u64) -> Result<Vec<WriteBack>> {
        written(&*self.engine, v)
    }

    /// The changes the corrections make to the sources: each worker's
    /// Practitioner (phone) and PractitionerRole (facility) as read from
    /// their source now, corrected. A worker whose Practitioner changed
    /// at the source since the directory read it is a conflict; workers
    /// with no configured FHIR source, or no readable correction, are
    /// skipped. Returns the changes and the workers that have none.
    pub async fn plan(
        &self,
        outcomes: &[Outcome],
        sources: &DirectoryConfig,
        now: u64,
    ) -> (Vec<Planned>, Vec<WriteBack>) {
        let mut planned = Vec::new();
        let mut not = Vec::new();
        let corrected: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| o.status == Status::Corrected)
            .collect();
        // The workers' directory records, read on a blocking thread.
        let numbers: Vec<u32> = corrected.iter().map(|o| o.contact).collect();
        let directory = Arc::clone(&self.directory);
        let contacts: Vec<Result<Option<Contact>>> = tokio::task::spawn_blocking(move || {
            numbers.into_iter().map(|n| directory.contact(n)).collect()
        })
        .await
        .unwrap_or_else(|e| {
            corrected
                .iter()
                .map(|_| {
                    Err(Error::Internal(format!(
                        "reading the directory failed: {e}"
                    )))
                })
                .collect()
        });
        // One client (and connection pool) per source for the whole run.
        let mut clients: BTreeMap<String, SourceClient<'_>> = BTreeMap::new();
        for (o, contact) in corrected.into_iter().zip(contacts) {
            let result = |result: &str, detail: String| WriteBack {
                contact: o.contact,
                result: result.into(),
                written: Vec::new(),
                detail: Some(detail),
                at_ms: now,
            };
            let phone = o.phone.as_ref().and_then(|c| c.value.clone());
            let facility = o.facility.as_ref().and_then(|c| c.value.clone());
            if phone.is_none() && facility.is_none() {
                not.push(result(
                    "skipped",
                    "no correction could be read (see the report's problems)".into(),
                ));
                continue;
            }
            let contact = match contact {
                Ok(Some(c)) => c,
                Ok(None) => {
                    not.push(result("skipped", "no longer in the directory".into()));
                    continue;
                }
                Err(e) => {
                    not.push(result("failed", e.to_string()));
                    continue;
                }
            };
            let Some((name, part, source)) = contact.parts.iter().find_map(|p| {
                sources
                    .sources
                    .get(&p.source)
                    .map(|s| (p.source.clone(), p, s))
            }) else {
                not.push(result(
                    "skipped",
                    "it came from no configured FHIR source (directory.sources)".into(),
                ));
                continue;
            };
            let client = clients
                .entry(name.clone())
                .or_insert_with(|| SourceClient::new(source));
            match client.corrections(part, phone, facility).await {
                Ok(changes) if changes.is_empty() => {
                    not.push(result("skipped", "already so at the source".into()))
                }
                Ok(changes) => {
                    planned.extend(changes.into_iter().map(|(reference, if_match, resource)| {
                        Planned {
                            contact: o.contact,
                            source: name.clone(),
                            reference,
                            if_match,
                            resource,
                        }
                    }))
                }
                Err(Failure::Conflict(d)) => not.push(result("conflict", d)),
                Err(Failure::Failed(d)) => not.push(result("failed", d)),
            }
        }
        (planned, not)
    }

    /// What [`Self::write_back`] would do now, writing nothing: each
    /// worker with changes is `planned` (the detail names each `PUT` and
    /// the version it must match), the others as [`Self::plan`] found
    /// them. Workers already written are left out, as the write-back
    /// leaves them alone.
    pub async fn preview(
        &self,
        v: u64,
        planned: Vec<Planned>,
        results: Vec<WriteBack>,
        now: u64,
    ) -> Result<Vec<WriteBack>> {
        let (by_contact, mut results) = self.pending(v, planned, results).await?;
        for (contact, changes) in by_contact {
            let puts: Vec<String> = changes
                .iter()
                .map(|p| format!("PUT {} (If-Match W/\"{}\")", p.reference, p.if_match))
                .collect();
            results.push(WriteBack {
                contact,
                result: "planned".into(),
                written: Vec::new(),
                detail: Some(puts.join("; ")),
                at_ms: now,
            });
        }
        results.sort_by_key(|r| r.contact);
        Ok(results)
    }

    /// The planned changes by worker and the other results, without the
    /// workers already written (read on a blocking thread).
    async fn pending(
        &self,
        v: u64,
        planned: Vec<Planned>,
        mut results: Vec<WriteBack>,
    ) -> Result<(ByWorker, Vec<WriteBack>)> {
        let engine = Arc::clone(&self.engine);
        let written = tokio::task::spawn_blocking(move || written(&*engine, v))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        let done: std::collections::HashSet<u32> = written
            .into_iter()
            .filter(|w| w.result == "written")
            .map(|w| w.contact)
            .collect();
        results.retain(|r| !done.contains(&r.contact));
        let mut by_contact = ByWorker::new();
        for p in planned.into_iter().filter(|p| !done.contains(&p.contact)) {
            by_contact.entry(p.contact).or_default().push(p);
        }
        Ok((by_contact, results))
    }

    /// Writes the planned changes to their sources (a worker's
    /// Practitioner, then their PractitionerRole), each with `If-Match`:
    /// a 412 is a conflict, reported, not retried. Keeps and returns
    /// what happened to each worker. Workers already written are left
    /// alone.
    pub async fn write_back(
        &self,
        v: u64,
        planned: Vec<Planned>,
        results: Vec<WriteBack>,
        sources: &DirectoryConfig,
        now: u64,
    ) -> Result<Vec<WriteBack>> {
        let (by_contact, mut results) = self.pending(v, planned, results).await?;
        let mut clients: BTreeMap<String, SourceClient<'_>> = BTreeMap::new();
        for (contact, changes) in by_contact {
            let mut w = WriteBack {
                contact,
                result: "written".into(),
                written: Vec::new(),
                detail: None,
                at_ms: now,
            };
            for p in changes {
                let client = clients
                    .entry(p.source.clone())
                    .or_insert_with(|| SourceClient::new(&sources.sources[&p.source]));
                match client.put(&p).await {
                    Ok(version) => w
                        .written
                        .push(format!("{}/_history/{version}", p.reference)),
                    Err(Failure::Conflict(d)) => {
                        w.result = "conflict".into();
                        w.detail = Some(d);
                        break;
                    }
                    Err(Failure::Failed(d)) => {
                        w.result = "failed".into();
                        w.detail = Some(d);
                        break;
                    }
                }
            }
            results.push(w);
        }
        let mut batch = Batch::new();
        for r in &results {
            batch.put(Cf::Workflows, member_key(WRITTEN, v, r.contact), encode(r));
        }
        let engine = Arc::clone(&self.engine);
        tokio::task::spawn_blocking(move || engine.write(batch))
            .await
            .map_err(|e| Error::Internal(e.to_string()))??;
        results.sort_by_key(|r| r.contact);
        Ok(results)
    }
}

/// What writing back did for each worker of validation `v`. Blocking.
fn written(engine: &dyn Engine, v: u64) -> Result<Vec<WriteBack>> {
    super::members(engine, WRITTEN, v, None, usize::MAX)
}

/// Whether a number as a source holds it (E.164, or international with
/// spaces or dashes) is `e164`. A national form cannot be read without
/// the country, and is taken as different (rewritten in E.164).
fn same_number(held: &str, e164: &str) -> bool {
    held == e164 || crate::phone::e164(held, None).is_ok_and(|n| n == e164)
}

/// A number as a worker wrote it, in E.164.
fn read_phone(given: &str, region: Option<phonenumber::country::Id>) -> Correction {
    let t = given.trim();
    match crate::phone::e164(t, region) {
        Ok(n) => Correction {
            given: t.to_string(),
            value: Some(n),
            problem: None,
        },
        Err(e) => Correction {
            given: t.to_string(),
            value: None,
            problem: Some(e),
        },
    }
}

/// The questions, in English and French; `{facility}` is filled per
/// worker.
pub fn questionnaire() -> Value {
    let text = |en: &str, fr: &str| {
        json!({"text": en, "_text": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/translation",
            "extension": [{"url": "lang", "valueCode": "fr"}, {"url": "content", "valueString": fr}]}]}})
    };
    let item = |link: &str, kind: &str, t: Value, when: Option<&str>| {
        let mut i = json!({"linkId": link, "type": kind});
        for (k, v) in t.as_object().expect("an object") {
            i[k] = v.clone();
        }
        if let Some(q) = when {
            i["enableWhen"] = json!([{"question": q, "operator": "=", "answerBoolean": false}]);
        }
        i
    };
    json!({
        "resourceType": "Questionnaire",
        "status": "active",
        "title": "Health worker data check",
        "item": [
            item(FACILITY_OK, "boolean", text(
                "Ministry of Health data check. Is {facility} still where you work?",
                "Vérification des données du ministère de la Santé. Travaillez-vous toujours à {facility} ?"), None),
            item(FACILITY, "string", text(
                "Reply with the name or code of the health facility where you work now.",
                "Répondez avec le nom ou le code de l'établissement de santé où vous travaillez."), Some(FACILITY_OK)),
            item(PHONE_OK, "boolean", text(
                "Is this phone number the one to reach you on?",
                "Ce numéro de téléphone est-il celui où vous joindre ?"), None),
            item(PHONE, "string", text(
                "Reply with the phone number to reach you on.",
                "Répondez avec le numéro de téléphone où vous joindre."), Some(PHONE_OK)),
        ]
    })
}

enum Failure {
    Conflict(String),
    Failed(String),
}

/// A FHIR source, for writing corrections.
struct SourceClient<'a> {
    config: &'a SourceConfig,
    client: reqwest::Client,
}

impl<'a> SourceClient<'a> {
    fn new(config: &'a SourceConfig) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(config.timeout_s))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Self { config, client }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/{path}", self.config.base_url.trim_end_matches('/'))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .client
            .request(method, self.url(path))
            .header(reqwest::header::ACCEPT, "application/fhir+json");
        match &self.config.auth {
            Some(a) => a.apply(r),
            None => r,
        }
    }

    async fn get(&self, path: &str) -> std::result::Result<Value, Failure> {
        let resp = self
            .request(reqwest::Method::GET, path)
            .send()
            .await
            .map_err(|e| Failure::Failed(format!("GET {path}: {e}")))?;
        let status = resp.status();
        let body = json_body(resp)
            .await
            .map_err(|e| Failure::Failed(format!("GET {path}: {status}: {e}")))?;
        if !status.is_success() {
            return Err(Failure::Failed(format!("GET {path}: {status}: {body}")));
        }
        Ok(body)
    }

    /// The worker's Practitioner (phone) and PractitionerRole (facility)
    /// as they will be: `(reference, version it must have, resource)`.
    /// What the source already says needs no write.
    async fn corrections(
        &self,
        part: &Part,
        phone: Option<String>,
        facility: Option<String>,
    ) -> std::result::Result<Vec<(String, String, Value)>, Failure> {
        let mut out = Vec::new();
        if let Some(phone) = phone {
            out.extend(self.phone_correction(part, &phone).await?);
        }
        if let Some(location) = facility {
            out.extend(self.facility_correction(part, location).await?);
        }
        Ok(out)
    }

    /// The Practitioner with `phone` as its number, unless the source has
    /// that number already (the registry took the same correction since,
    /// whatever version it is at now). A Practitioner changed at the
    /// source since the directory read it is a conflict.
    async fn phone_correction(
        &self,
        part: &Part,
        phone: &str,
    ) -> std::result::Result<Option<(String, String, Value)>, Failure> {
        let mut p = self.get(&part.resource).await?;
        let mut telecom = p["telecom"].as_array().cloned().unwrap_or_default();
        let at_source = telecom
            .iter()
            .find(|t| t["system"] == "phone")
            .and_then(|t| t["value"].as_str());
        if at_source.is_some_and(|n| same_number(n, phone)) {
            return Ok(None);
        }
        let now = p["meta"]["versionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let held = part.version_id.clone().unwrap_or_default();
        if now != held {
            return Err(Failure::Conflict(format!(
                "{} is at version {now:?} at the source; the directory holds {held:?}: changed there since, not overwritten",
                part.resource
            )));
        }
        match telecom.iter_mut().find(|t| t["system"] == "phone") {
            Some(t) => t["value"] = json!(phone),
            None => telecom.insert(
                0,
                json!({"system": "phone", "value": phone, "use": "mobile"}),
            ),
        }
        p["telecom"] = json!(telecom);
        Ok(Some((part.resource.clone(), now, p)))
    }

    /// The worker's active PractitionerRole at `location`, unless it is
    /// there already. A role that puts the worker somewhere the directory
    /// did not have them is a conflict.
    async fn facility_correction(
        &self,
        part: &Part,
        location: String,
    ) -> std::result::Result<Option<(String, String, Value)>, Failure> {
        let search = self
            .get(&format!(
                "PractitionerRole?practitioner={}&_count=10",
                part.resource
            ))
            .await?;
        let role = search["entry"]
            .as_array()
            .and_then(|e| {
                e.iter()
                    .map(|x| &x["resource"])
                    .find(|r| r["active"] != false)
            })
            .cloned();
        let Some(mut role) = role else {
            return Err(Failure::Failed(format!(
                "{} has no PractitionerRole at the source to move",
                part.resource
            )));
        };
        let version = role["meta"]["versionId"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let reference = format!(
            "PractitionerRole/{}",
            role["id"].as_str().unwrap_or_default()
        );
        // The directory holds no version of the role, but it holds where
        // the role put the worker when it was synced: a role that puts
        // them elsewhere now was changed at the source since (the
        // registry moved them), and is not overwritten.
        let at_source: Vec<String> = role["location"]
            .as_array()
            .map(|ls| {
                ls.iter()
                    .filter_map(|l| url_ref(l["reference"].as_str()?))
                    .collect()
            })
            .unwrap_or_default();
        if at_source.contains(&location) {
            return Ok(None);
        }
        if let Some(moved) = at_source.iter().find(|l| !part.facilities.contains(l)) {
            return Err(Failure::Conflict(format!(
                "{reference} puts the worker at {moved} at the source; the directory holds {:?}: changed there since, not overwritten",
                part.facilities
            )));
        }
        role["location"] = json!([{ "reference": location }]);
        Ok(Some((reference, version, role)))
    }

    /// PUT with `If-Match`; the new version.
    async fn put(&self, p: &Planned) -> std::result::Result<String, Failure> {
        let resp = self
            .request(reqwest::Method::PUT, &p.reference)
            .header(reqwest::header::IF_MATCH, format!("W/\"{}\"", p.if_match))
            .header(reqwest::header::CONTENT_TYPE, "application/fhir+json")
            .body(p.resource.to_string())
            .send()
            .await
            .map_err(|e| Failure::Failed(format!("PUT {}: {e}", p.reference)))?;
        let status = resp.status();
        let body = json_body(resp).await.unwrap_or(Value::Null);
        if status == reqwest::StatusCode::PRECONDITION_FAILED
            || status == reqwest::StatusCode::CONFLICT
        {
            return Err(Failure::Conflict(format!(
                "PUT {}: {status}: changed at the source since version {:?}, not overwritten",
                p.reference, p.if_match
            )));
        }
        if !status.is_success() {
            return Err(Failure::Failed(format!(
                "PUT {}: {status}: {body}",
                p.reference
            )));
        }
        Ok(body["meta"]["versionId"]
            .as_str()
            .unwrap_or_default()
            .to_string())
    }
}

/// A FHIR server's answer (at most 1 MiB: one resource, or a page of
/// PractitionerRoles).
async fn json_body(resp: reqwest::Response) -> std::result::Result<Value, String> {
    let text = crate::directory::fhir::read_limited(resp, 1 << 20).await?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

impl Auth {
    /// Adds the credentials to a request.
    pub fn apply(&self, r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match self {
            Auth::Bearer(t) => r.bearer_auth(t),
            Auth::Basic { user, password } => r.basic_auth(user, Some(password)),
        }
    }
}

/// The planned changes as a FHIR transaction Bundle: each a `PUT` with
/// `ifMatch` on the version it was corrected from.
pub fn bundle(planned: &[Planned]) -> Value {
    let entry: Vec<Value> = planned
        .iter()
        .map(|p| {
            json!({
                "fullUrl": format!("urn:mhero:{}:{}", p.source, p.reference),
                "resource": p.resource,
                "request": {"method": "PUT", "url": p.reference, "ifMatch": format!("W/\"{}\"", p.if_match)},
            })
        })
        .collect();
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entry})
}

/// Counts by status.
pub fn totals<'a>(outcomes: impl IntoIterator<Item = &'a Outcome>) -> BTreeMap<Status, u64> {
    let mut t = BTreeMap::new();
    for o in outcomes {
        *t.entry(o.status).or_default() += 1;
    }
    t
}

/// A place's id and name.
pub type PlaceName = (String, String);
/// Workers by status.
pub type StatusCounts = BTreeMap<Status, u64>;

/// Counts by status per place of kind `level` (`district`) enclosing
/// each worker's facility; workers with none are under `None`.
pub fn by_place(
    directory: &Directory,
    outcomes: &[Outcome],
    level: &str,
) -> Result<Vec<(Option<PlaceName>, StatusCounts)>> {
    let mut rows: BTreeMap<Option<PlaceName>, Vec<&Outcome>> = BTreeMap::new();
    let mut cache: std::collections::HashMap<String, Option<PlaceName>> =
        std::collections::HashMap::new();
    for o in outcomes {
        let facility = directory
            .contact(o.contact)?
            .and_then(|c| c.facilities().first().map(|f| f.to_string()));
        let place = match facility {
            Some(f) => cache
                .entry(f.clone())
                .or_insert_with(|| {
                    directory
                        .places_up(&f)
                        .into_iter()
                        .find(|(_, p)| p.kind.as_deref() == Some(level))
                        .map(|(id, p)| (id, p.name))
                })
                .clone(),
            None => None,
        };
        rows.entry(place).or_default().push(o);
    }
    Ok(rows
        .into_iter()
        .map(|(place, os)| (place, totals(os)))
        .collect())
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn the_questions_parse_and_branch_on_a_no() {
        let parsed = crate::workflows::questionnaire::parse(&questionnaire()).unwrap();
        let links: Vec<&str> = parsed
            .questions
            .iter()
            .map(|q| q.link_id.as_str())
            .collect();
        assert_eq!(links, [FACILITY_OK, FACILITY, PHONE_OK, PHONE]);
        let yes = [(0, Answer::Boolean(true))];
        let no = [(0, Answer::Boolean(false))];
        assert!(!parsed.questions[1].enabled(&yes));
        assert!(parsed.questions[1].enabled(&no));
        assert!(
            parsed.questions[0]
                .text
                .default
                .contains(crate::workflows::survey::FACILITY)
        );
    }

    #[test]
    fn numbers_are_read_in_the_country_or_refused_with_the_reason() {
        let region = "LR".parse().ok();
        assert_eq!(
            read_phone(" 0886 123 456 ", region).value.as_deref(),
            Some("+231886123456")
        );
        let bad = read_phone("call me", region);
        assert!(bad.value.is_none() && bad.problem.is_some());
    }

    #[test]
    fn a_source_holds_the_same_number_in_e164_or_international_form() {
        assert!(same_number("+231886123456", "+231886123456"));
        assert!(same_number("+231 88 612 3456", "+231886123456"));
        assert!(same_number("+231-886-123-456", "+231886123456"));
        assert!(!same_number("+231886123457", "+231886123456"));
        // National: the country is not known here, so it is rewritten.
        assert!(!same_number("0886 123 456", "+231886123456"));
    }
}
