//! Two-way workflows built on the inbound pipeline.
//!
//! - [`survey`]: flash surveys: a FHIR Questionnaire asked one question at
//!   a time, answers classified with the question as context, re-asked
//!   once, timeouts and a deadline, live aggregates, sessions that survive
//!   restarts. [`questionnaire`] reads the Questionnaire.
//! - [`lab`]: lab results from a FHIR DiagnosticReport to the clinician who
//!   ordered it (a notice only on insecure channels), and their
//!   acknowledgement.
//! - [`courses`]: training: lessons and quizzes (through the survey
//!   engine) on a schedule, per-worker progress that survives restarts.
//! - [`validation`]: workers confirm or correct their facility and phone;
//!   corrections go back to the FHIR source with `If-Match`.
//! - [`reports`]: structured reports (stock, cases), the latest stock per
//!   facility rolled up by the location hierarchy, alerts to the district.
//!
//! Each keeps its state in the `workflows` column family under its own
//! key prefixes (listed in each module).

pub mod courses;
pub mod lab;
pub mod questionnaire;
pub mod reports;
pub mod survey;
pub mod validation;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use courses::Courses;
pub use reports::Reports;
pub use survey::{Outgoing, SurveyRecord, SurveySpec, Surveys};
pub use validation::Validations;

use crate::dispatch::{AudienceSpec, Body, CampaignSpec, Submitter};
use crate::error::Error;
use crate::error::Result;
use crate::store::{Cf, Engine, Versioned, decode_value};

/// The workflows the inbound pipeline routes replies to.
#[derive(Clone)]
pub struct Workflows {
    pub surveys: Arc<Surveys>,
    pub reports: Arc<Reports>,
    pub courses: Arc<Courses>,
}

/// Enrolling a whole audience writes its workers' records in batches of
/// about this many writes, so a national survey or course is not one
/// giant batch. What makes the enrolment live (the record, its due
/// entries) goes in the last batch alone: a check or a crash between two
/// batches sees records of a workflow that does not exist yet, never
/// something due for it. Small under test, so that a handful of workers
/// crosses batches.
pub(crate) const ENROL_BATCH: usize = if cfg!(test) { 2 } else { 30_000 };

/// `prefix | id`: a workflow record (a survey, a course).
pub(crate) fn key(prefix: u8, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(prefix);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `prefix | id | contact`: one worker's part in it (a session, progress).
pub(crate) fn member_key(prefix: u8, id: u64, contact: u32) -> Vec<u8> {
    let mut k = key(prefix, id);
    k.extend_from_slice(&contact.to_be_bytes());
    k
}

/// `prefix | at ms | id | contact`: when something is due for a worker.
pub(crate) fn due_key(prefix: u8, at: u64, id: u64, contact: u32) -> Vec<u8> {
    let mut k = key(prefix, at);
    k.extend_from_slice(&id.to_be_bytes());
    k.extend_from_slice(&contact.to_be_bytes());
    k
}

fn due_from(prefix: u8, k: &[u8]) -> Option<(u64, u64, u32)> {
    let rest = k.strip_prefix(&[prefix])?;
    if rest.len() != 20 {
        return None;
    }
    Some((
        u64::from_be_bytes(rest[..8].try_into().ok()?),
        u64::from_be_bytes(rest[8..16].try_into().ok()?),
        u32::from_be_bytes(rest[16..].try_into().ok()?),
    ))
}

/// The entries under `prefix` due by `now`, earliest first, at most
/// `max`: `(at, id, contact)`.
pub(crate) fn due_by(
    engine: &dyn Engine,
    prefix: u8,
    now: u64,
    max: usize,
) -> Result<Vec<(u64, u64, u32)>> {
    let mut due = Vec::new();
    engine.scan(
        Cf::Workflows,
        &[prefix],
        &due_key(prefix, now.saturating_add(1), 0, 0),
        &mut |k, _| {
            if let Some(d) = due_from(prefix, k) {
                due.push(d);
            }
            Ok(due.len() < max)
        },
    )?;
    Ok(due)
}

/// Every record under `prefix`, by the id each gives.
pub(crate) fn load_all<T: Versioned>(
    engine: &dyn Engine,
    prefix: u8,
    id: impl Fn(&T) -> u64,
) -> Result<BTreeMap<u64, Arc<T>>> {
    let mut out = BTreeMap::new();
    let mut failure = None;
    engine.scan(Cf::Workflows, &[prefix], &[prefix + 1], &mut |k, v| {
        match decode_value::<T>(v) {
            Ok(t) => {
                out.insert(id(&t), Arc::new(t));
            }
            Err(m) => failure = Some(bad(k, m)),
        }
        Ok(failure.is_none())
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// The record `prefix | id`, as committed; `None` if there is none.
pub(crate) fn load_one<T: Versioned>(
    engine: &dyn Engine,
    prefix: u8,
    id: u64,
) -> Result<Option<T>> {
    let k = key(prefix, id);
    match engine.get(Cf::Workflows, &k)? {
        Some(v) => decode_value::<T>(&v).map(Some).map_err(|m| bad(&k, m)),
        None => Ok(None),
    }
}

/// An id counter kept under a key of its own (1 when there is none yet).
/// Each id is claimed durably, under the counter's lock, before anything
/// is written under it: two creations at once cannot write the counter
/// back (the second-claimed committing first), and a creation cut short
/// by a crash leaves its records under an id nothing takes again.
pub(crate) struct Ids {
    key: &'static [u8],
    next: parking_lot::Mutex<u64>,
}

impl Ids {
    pub(crate) fn open(engine: &dyn Engine, key: &'static [u8]) -> Result<Self> {
        let next = match engine.get(Cf::Workflows, key)? {
            Some(v) => decode_value::<u64>(&v).map_err(|m| bad(key, m))?,
            None => 1,
        };
        Ok(Self {
            key,
            next: parking_lot::Mutex::new(next),
        })
    }

    /// The next id, once the counter past it is committed. Blocking.
    pub(crate) fn claim(&self, engine: &dyn Engine) -> Result<u64> {
        let mut next = self.next.lock();
        let id = *next;
        let mut batch = crate::store::Batch::new();
        batch.put(
            Cf::Workflows,
            self.key.to_vec(),
            crate::store::encode(&(id + 1)),
        );
        engine.write(batch)?;
        *next = id + 1;
        Ok(id)
    }
}

/// Workers' records of `id` under `prefix` after contact `after`, in
/// contact order, at most `limit`.
pub(crate) fn members<T: Versioned>(
    engine: &dyn Engine,
    prefix: u8,
    id: u64,
    after: Option<u32>,
    limit: usize,
) -> Result<Vec<T>> {
    if after == Some(u32::MAX) || limit == 0 {
        return Ok(Vec::new());
    }
    let from = member_key(prefix, id, after.map_or(0, |a| a + 1));
    let to = crate::store::keys::end_of_prefix(&key(prefix, id));
    let mut out = Vec::new();
    let mut failure = None;
    engine.scan(Cf::Workflows, &from, &to, &mut |k, v| {
        match decode_value::<T>(v) {
            Ok(t) => out.push(t),
            Err(m) => failure = Some(bad(k, m)),
        }
        Ok(out.len() < limit && failure.is_none())
    })?;
    match failure {
        Some(e) => Err(e),
        None => Ok(out),
    }
}

/// A `workflows` record that cannot be read.
pub(crate) fn bad(key: &[u8], message: String) -> Error {
    Error::Store(crate::store::Error::BadRecord {
        cf: Cf::Workflows.name(),
        key: crate::store::hex(key),
        message,
    })
}

/// Sends what surveys ask: one campaign per survey and text (a question in
/// one language goes to everyone at that question at once). Returns the
/// problems, by message count.
pub async fn send(surveys: &Surveys, submitter: &Submitter, out: Vec<Outgoing>) -> Vec<String> {
    let mut groups: BTreeMap<(u64, String), Vec<crate::audience::Recipient>> = BTreeMap::new();
    for o in out {
        groups
            .entry((o.survey, o.text))
            .or_default()
            .push(o.recipient);
    }
    let mut problems = Vec::new();
    for ((id, text), recipients) in groups {
        let Some(survey) = surveys.get(id) else {
            continue;
        };
        let n = recipients.len();
        let spec = CampaignSpec {
            name: format!("survey s{id}: {}", survey.title),
            lane: survey.lane,
            body: Body::text(&text),
            channels: survey.channels.clone(),
            audience: AudienceSpec::Recipients(recipients),
            expires_at_ms: Some(survey.deadline_ms),
            start_at_ms: None,
        };
        if let Err(e) = submitter.submit(spec).await {
            tracing::warn!(survey = id, messages = n, error = %e, "Cannot send survey questions.");
            problems.push(format!("{n} survey messages not sent: {e}"));
        }
    }
    problems
}

/// Sends a course's lessons: one campaign per course, step and text.
/// Returns the problems, by message count.
pub async fn send_lessons(
    courses: &Courses,
    submitter: &Submitter,
    lessons: Vec<courses::Lesson>,
) -> Vec<String> {
    let mut groups: BTreeMap<(u64, u32, String), Vec<crate::audience::Recipient>> = BTreeMap::new();
    for l in lessons {
        groups
            .entry((l.course, l.step, l.text))
            .or_default()
            .push(l.recipient);
    }
    let mut problems = Vec::new();
    for ((id, step, text), recipients) in groups {
        let Some(course) = courses.get(id) else {
            continue;
        };
        let n = recipients.len();
        let what = if step as usize >= course.steps.len() {
            "completed".to_string()
        } else {
            format!("step {}", step + 1)
        };
        let spec = CampaignSpec {
            name: format!("course c{id} {what}: {}", course.name),
            lane: course.lane,
            body: Body::text(&text),
            channels: course.channels.clone(),
            audience: AudienceSpec::Recipients(recipients),
            expires_at_ms: None,
            start_at_ms: None,
        };
        if let Err(e) = submitter.submit(spec).await {
            tracing::warn!(course = id, messages = n, error = %e, "Cannot send course lessons.");
            problems.push(format!("{n} course messages not sent: {e}"));
        }
    }
    problems
}
