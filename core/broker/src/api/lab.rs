//! `POST /fhir/r4/DiagnosticReport`: a lab result to the clinician who
//! ordered it, at high priority. See [`crate::workflows::lab`].

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use mhero_proto::{CampaignId, Lane};
use serde_json::{Value, json};

use super::Api;
use super::fhir::{Fhir, resource};
use crate::dispatch::{AudienceSpec, Body, CampaignSpec};
use crate::error::Error;
use crate::workflows::lab::{self, LabRecord, LabResults};

/// The answer: the request that carries the result.
fn created(record: &LabRecord) -> Value {
    let id = CampaignId(record.campaign);
    json!({
        "resourceType": "CommunicationRequest",
        "id": id.to_string(),
        "status": "active",
        "priority": "urgent",
        "about": [{"identifier": {"value": record.report}}],
        "category": [{"coding": [{"system": "https://mhero.org/fhir/CodeSystem/message-kind", "code": "lab-result"}]}],
        "extension": [{"url": "https://mhero.org/fhir/StructureDefinition/carries-result", "valueBoolean": record.carries_result}],
    })
}

/// Send a lab result.
#[utoipa::path(post, path = "/fhir/r4/DiagnosticReport", tag = "fhir", security(("token" = [])),
    request_body(content = Object, content_type = "application/fhir+json",
        description = "A DiagnosticReport with an identifier, its Observations contained (`result`: `#id`) and the ServiceRequest it answers contained (`basedOn`: `#id`), whose `requester` is a directory Practitioner or a contained one with a phone"),
    responses(
        (status = 201, description = "Sent (or being sent): the CommunicationRequest that carries it; follow it with GET /fhir/r4/Communication?based-on=", content_type = "application/fhir+json"),
        (status = 200, description = "This report was sent before: the same CommunicationRequest, nothing sent again", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome naming the element", content_type = "application/fhir+json"),
    ))]
pub async fn post_report(State(api): State<Arc<Api>>, body: Result<Bytes, BytesRejection>) -> Fhir {
    async {
        let report = resource(body, "DiagnosticReport")?;
        let reader = Arc::clone(&api);
        let (read, earlier) = tokio::task::spawn_blocking(move || -> crate::Result<_> {
            let read = lab::read(&report, reader.broker.directory())?;
            let earlier =
                LabResults::new(Arc::clone(reader.broker.store().engine())).sent(&read.id)?;
            Ok((read, earlier))
        })
        .await??;
        if let Some(r) = earlier {
            return Ok((
                StatusCode::OK,
                created(&r),
                Some(format!(
                    "/fhir/r4/CommunicationRequest/{}",
                    CampaignId(r.campaign)
                )),
            ));
        }
        let config = api.broker.config();
        let preference: Vec<String> = if api.config.default_channels.is_empty() {
            config.channels.keys().cloned().collect()
        } else {
            api.config.default_channels.clone()
        };
        let insecure = |c: &str| config.channels.get(c).is_some_and(|c| c.insecure);
        let first = preference
            .iter()
            .find(|c| read.recipient.address(c).is_some())
            .ok_or_else(|| {
                Error::field_invalid(
                    "basedOn.requester",
                    format!(
                        "the requester has no address on any channel ({})",
                        preference.join(", ")
                    ),
                )
            })?;
        // The result goes only where it may be read safely: on the secure
        // channels from the first reachable one on (no fallback to an
        // insecure one); when that first one is insecure, everywhere as a
        // notice.
        let (text, channels, carries_result) = if insecure(first) {
            (read.notice.clone(), preference.clone(), false)
        } else {
            let secure: Vec<String> = preference
                .iter()
                .filter(|c| !insecure(c))
                .cloned()
                .collect();
            (read.text.clone(), secure, true)
        };
        let submitted = api
            .broker
            .dispatcher()
            .submit(CampaignSpec {
                name: format!("lab result {}", read.id),
                lane: Lane::High,
                body: Body::text(&text),
                channels,
                audience: AudienceSpec::Recipients(vec![read.recipient.clone()]),
                expires_at_ms: None,
                start_at_ms: None,
            })
            .await?;
        if submitted.accepted == 0 {
            return Err(Error::field_invalid(
                "basedOn.requester",
                submitted
                    .rejected
                    .first()
                    .map_or("no valid address".to_string(), |r| r.reason.clone()),
            )
            .into());
        }
        let record = LabRecord {
            report: read.id.clone(),
            campaign: submitted.id.0,
            requester: read.requester.clone(),
            carries_result,
            sent_ms: api.broker.dispatcher().now_ms(),
            ack: None,
        };
        let writer = Arc::clone(&api);
        let kept = record.clone();
        tokio::task::spawn_blocking(move || {
            LabResults::new(Arc::clone(writer.broker.store().engine())).record(&kept)
        })
        .await??;
        Ok((
            StatusCode::CREATED,
            created(&record),
            Some(format!("/fhir/r4/CommunicationRequest/{}", submitted.id)),
        ))
    }
    .await
    .into()
}
