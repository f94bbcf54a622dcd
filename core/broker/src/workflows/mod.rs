//! Two-way workflows built on the inbound pipeline.
//!
//! - [`survey`]: flash surveys: a FHIR Questionnaire asked one question at
//!   a time, answers classified with the question as context, re-asked
//!   once, timeouts and a deadline, live aggregates, sessions that survive
//!   restarts. [`questionnaire`] reads the Questionnaire.
//! - [`lab`]: lab results from a FHIR DiagnosticReport to the clinician who
//!   ordered it (a notice only on insecure channels), and their
//!   acknowledgement.
//! - [`reports`]: structured reports (stock, cases), the latest stock per
//!   facility rolled up by the location hierarchy, alerts to the district.
//!
//! Each keeps its state in the `workflows` column family under its own
//! key prefixes (listed in each module).

pub mod lab;
pub mod questionnaire;
pub mod reports;
pub mod survey;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::sync::Arc;

pub use reports::Reports;
pub use survey::{Outgoing, SurveyRecord, SurveySpec, Surveys};

use crate::dispatch::{AudienceSpec, Body, CampaignSpec, Submitter};
use crate::error::Error;
use crate::store::Cf;

/// The workflows the inbound pipeline routes replies to.
#[derive(Clone)]
pub struct Workflows {
    pub surveys: Arc<Surveys>,
    pub reports: Arc<Reports>,
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
