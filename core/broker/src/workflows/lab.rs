//! Lab results: a FHIR `DiagnosticReport` (its `Observation`s and the
//! `ServiceRequest` it answers contained) becomes a high-lane message to
//! the clinician who ordered it; on a channel the config marks `insecure`
//! (plain SMS) the message carries no result, only a notice to fetch it.
//! The clinician's first reply to it is kept as their acknowledgement.
//!
//! State (the `workflows` key space):
//!
//! ```text
//! L | report id            the campaign that carried the report (a report sent twice is sent once)
//! l | campaign             the result: report id, recipient, acknowledgement
//! ```

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::bad;
use crate::audience::Recipient;
use crate::directory::Directory;
use crate::error::{Error, Result};
use crate::store::{Batch, Cf, Engine, Versioned, decode_value, encode};

const BY_REPORT: u8 = b'L';
const RESULT: u8 = b'l';
/// Longest report identifier kept.
const MAX_ID: usize = 128;
/// Most observations put in one message.
const MAX_OBSERVATIONS: usize = 10;

/// A result sent, and what came back.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabRecord {
    pub report: String,
    pub campaign: u64,
    /// `Practitioner/…` as the directory (or the report) names them.
    pub requester: Option<String>,
    /// Whether the result itself was sent (false: a notice only).
    pub carries_result: bool,
    pub sent_ms: u64,
    pub ack: Option<Ack>,
}

impl Versioned for LabRecord {
    const VERSION: u8 = 1;
}

/// The clinician's reply to a result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    /// The inbound message (seq).
    pub seq: u64,
    pub text: String,
    pub at_ms: u64,
    pub contact: Option<u32>,
}

/// A DiagnosticReport read for sending.
#[derive(Clone, Debug, PartialEq)]
pub struct Report {
    pub id: String,
    /// The full message, with the result.
    pub text: String,
    /// The message for insecure channels: no result, no test, no patient.
    pub notice: String,
    pub recipient: Recipient,
    pub requester: Option<String>,
}

/// Reads a DiagnosticReport; the error names the element.
pub fn read(report: &Value, directory: &Directory) -> Result<Report> {
    let invalid = |field: &str, why: &str| Error::field_invalid(field, why.to_string());
    if report.get("resourceType").and_then(Value::as_str) != Some("DiagnosticReport") {
        return Err(invalid("resourceType", "a DiagnosticReport is expected"));
    }
    match report.get("status").and_then(Value::as_str) {
        Some("final" | "amended" | "corrected" | "appended" | "preliminary") => {}
        Some(other) => {
            return Err(invalid(
                "status",
                &format!(
                    "{other:?}: only a released result (final, amended, corrected, appended, preliminary) is sent"
                ),
            ));
        }
        None => return Err(invalid("status", "required")),
    }
    let id = report
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|ids| ids.iter().find_map(|i| i.get("value")?.as_str()))
        .or_else(|| report.get("id").and_then(Value::as_str))
        .filter(|v| !v.trim().is_empty() && v.len() <= MAX_ID)
        .ok_or_else(|| {
            invalid(
                "identifier",
                "the report needs an identifier (or id) of at most 128 characters: it is the reference the clinician is given",
            )
        })?
        .trim()
        .to_string();
    let contained = report
        .get("contained")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let local = |reference: &str| {
        let id = reference.strip_prefix('#')?;
        contained
            .iter()
            .find(|r| r.get("id").and_then(Value::as_str) == Some(id))
    };
    // Who ordered it: the requester of the ServiceRequest it is based on.
    let request = report
        .get("basedOn")
        .and_then(Value::as_array)
        .and_then(|b| b.iter().find_map(|r| local(r.get("reference")?.as_str()?)))
        .ok_or_else(|| {
            invalid(
                "basedOn",
                "a contained ServiceRequest (basedOn: #id) names who ordered the test",
            )
        })?;
    let requester_ref = request
        .get("requester")
        .and_then(|r| r.get("reference"))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            invalid(
                "basedOn.requester",
                "the ServiceRequest's requester is required",
            )
        })?;
    let (recipient, requester) = if let Some(p) = local(requester_ref) {
        let phone = p
            .get("telecom")
            .and_then(Value::as_array)
            .and_then(|t| {
                t.iter().find_map(|x| {
                    (x.get("system").and_then(Value::as_str) == Some("phone"))
                        .then(|| x.get("value")?.as_str())
                        .flatten()
                })
            })
            .ok_or_else(|| {
                invalid(
                    "basedOn.requester",
                    "the contained requester has no phone telecom",
                )
            })?;
        (
            Recipient {
                phone: Some(phone.to_string()),
                ..Recipient::default()
            },
            None,
        )
    } else {
        let contact = directory.find(requester_ref)?.ok_or_else(|| {
            invalid(
                "basedOn.requester",
                &format!("{requester_ref} is not in the directory"),
            )
        })?;
        (contact.recipient(), Some(requester_ref.to_string()))
    };
    let test = concept(report.get("code")).unwrap_or_else(|| "test".into());
    let patient = report
        .get("subject")
        .and_then(|s| s.get("display").or_else(|| s.get("reference")))
        .and_then(Value::as_str)
        .unwrap_or("your patient");
    let mut lines = Vec::new();
    let results = report
        .get("result")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for r in results.iter().take(MAX_OBSERVATIONS) {
        let Some(o) = r.get("reference").and_then(Value::as_str).and_then(local) else {
            continue;
        };
        let name = concept(o.get("code")).unwrap_or_else(|| "result".into());
        let value = if let Some(q) = o.get("valueQuantity") {
            let v = q.get("value").map(|v| v.to_string()).unwrap_or_default();
            let unit = q
                .get("unit")
                .or_else(|| q.get("code"))
                .and_then(Value::as_str)
                .unwrap_or("");
            format!("{v} {unit}").trim().to_string()
        } else if let Some(s) = o.get("valueString").and_then(Value::as_str) {
            s.to_string()
        } else if let Some(c) = concept(o.get("valueCodeableConcept")) {
            c
        } else {
            continue;
        };
        let flag = o
            .get("interpretation")
            .and_then(Value::as_array)
            .and_then(|i| concept(i.first()))
            .map(|f| format!(" ({f})"))
            .unwrap_or_default();
        lines.push(format!("{name}: {value}{flag}"));
    }
    let conclusion = report
        .get("conclusion")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|c| !c.is_empty());
    if lines.is_empty() && conclusion.is_none() {
        return Err(invalid(
            "result",
            "no contained Observation with a value and no conclusion: there is no result to send",
        ));
    }
    let mut text = format!("Lab result, {test}, {patient}:");
    for l in &lines {
        text.push_str(&format!("\n{l}"));
    }
    if let Some(c) = conclusion {
        text.push_str(&format!("\n{c}"));
    }
    text.push_str(&format!("\nRef {id}. Reply OK when received."));
    let notice = format!(
        "A lab result is ready for your patient (ref {id}). Read it in the lab system. Reply OK when received."
    );
    Ok(Report {
        id,
        text,
        notice,
        recipient,
        requester,
    })
}

/// `text`, else the first coding's `display`, else its `code`.
fn concept(v: Option<&Value>) -> Option<String> {
    let v = v?;
    v.get("text")
        .and_then(Value::as_str)
        .or_else(|| {
            v.get("coding")?
                .as_array()?
                .iter()
                .find_map(|c| c.get("display").or_else(|| c.get("code"))?.as_str())
        })
        .map(str::to_string)
}

/// Lab results sent and their acknowledgements.
pub struct LabResults {
    engine: Arc<dyn Engine>,
}

impl LabResults {
    pub fn new(engine: Arc<dyn Engine>) -> Self {
        Self { engine }
    }

    /// The campaign that carried report `id`, if it was sent.
    pub fn sent(&self, id: &str) -> Result<Option<LabRecord>> {
        let Some(v) = self.engine.get(Cf::Workflows, &by_report(id))? else {
            return Ok(None);
        };
        let campaign = <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| bad(&by_report(id), "not 8 bytes".into()))?;
        self.of_campaign(campaign)
    }

    /// The result a campaign carried, if it carried one.
    pub fn of_campaign(&self, campaign: u64) -> Result<Option<LabRecord>> {
        let k = key(campaign);
        self.engine
            .get(Cf::Workflows, &k)?
            .map(|v| decode_value(&v).map_err(|m| bad(&k, m)))
            .transpose()
    }

    /// Keeps a result sent. Blocking.
    pub fn record(&self, r: &LabRecord) -> Result<()> {
        let mut batch = Batch::new();
        batch.put(Cf::Workflows, key(r.campaign), encode(r));
        batch.put(
            Cf::Workflows,
            by_report(&r.report),
            r.campaign.to_be_bytes().to_vec(),
        );
        Ok(self.engine.write(batch)?)
    }

    /// The writes that keep `ack` as the answer to campaign's result, if
    /// it carried one that is not acknowledged yet. Blocking.
    pub fn acknowledge(&self, campaign: u64, ack: Ack, batch: &mut Batch) -> Result<bool> {
        let Some(mut r) = self.of_campaign(campaign)? else {
            return Ok(false);
        };
        if r.ack.is_some() {
            return Ok(false);
        }
        r.ack = Some(ack);
        batch.put(Cf::Workflows, key(campaign), encode(&r));
        Ok(true)
    }
}

fn key(campaign: u64) -> Vec<u8> {
    let mut k = vec![RESULT];
    k.extend_from_slice(&campaign.to_be_bytes());
    k
}

fn by_report(id: &str) -> Vec<u8> {
    let mut k = vec![BY_REPORT];
    k.extend_from_slice(id.as_bytes());
    k
}
