//! Data validation over HTTP: start one, read the data-quality report,
//! export the corrections as a FHIR transaction Bundle, write them back to
//! the sources.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use super::Api;
use super::error::{ApiError, ApiJson};
use super::fhir::Fhir;
use crate::workflows::validation::{
    self, Outcome, Planned, Status, ValidationRecord, ValidationSpec, WriteBack,
};

/// A validation, started.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationCreated {
    /// `v2`.
    pub id: String,
    /// The survey that asks (`s7`).
    pub survey: String,
    pub asked: usize,
    /// Selected, with no address on the channels.
    pub no_address: usize,
}

/// Workers by where they stand.
#[derive(Debug, Default, Serialize, ToSchema)]
pub struct Counts {
    pub confirmed: u64,
    pub corrected: u64,
    pub unreachable: u64,
    pub no_answer: u64,
    pub in_progress: u64,
    pub opted_out: u64,
}

impl From<BTreeMap<Status, u64>> for Counts {
    fn from(t: BTreeMap<Status, u64>) -> Self {
        let n = |s| t.get(&s).copied().unwrap_or(0);
        Self {
            confirmed: n(Status::Confirmed),
            corrected: n(Status::Corrected),
            unreachable: n(Status::Unreachable),
            no_answer: n(Status::NoAnswer),
            in_progress: n(Status::InProgress),
            opted_out: n(Status::OptedOut),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DistrictCounts {
    /// `Location/…`; `null` for workers with no district.
    pub place: Option<String>,
    pub name: Option<String>,
    pub counts: Counts,
}

/// A worker's correction, with what writing it back did.
#[derive(Debug, Serialize, ToSchema)]
pub struct CorrectionView {
    #[serde(flatten)]
    pub outcome: Outcome,
    /// The worker's source resource (`Practitioner/123`).
    pub source: Option<String>,
    pub write_back: Option<WriteBack>,
}

/// The data-quality report.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationReport {
    pub id: String,
    pub survey: String,
    pub selector: String,
    pub created_ms: u64,
    /// `open` until the survey's deadline.
    pub state: &'static str,
    pub totals: Counts,
    pub by_district: Vec<DistrictCounts>,
    /// Every corrected worker (at most 1,000).
    pub corrections: Vec<CorrectionView>,
    /// Write-back results: `written`, `conflict`, `failed`, `skipped`.
    pub write_back: BTreeMap<String, u64>,
}

fn found(api: &Api, id: &str) -> Result<Arc<ValidationRecord>, ApiError> {
    id.strip_prefix('v')
        .unwrap_or(id)
        .parse()
        .ok()
        .and_then(|n| api.broker.validations().get(n))
        .ok_or_else(|| ApiError::not_found(format!("no validation {id:?}")))
}

/// Every worker's outcome (blocking: directory and store reads).
fn outcomes(api: &Api, v: &ValidationRecord) -> crate::Result<Vec<Outcome>> {
    let b = &api.broker;
    let survey = b.validations().survey_of(v)?;
    let now = b.dispatcher().now_ms();
    let channels: Vec<(String, mhero_proto::ChannelId)> = survey
        .channels
        .iter()
        .filter_map(|c| Some((c.clone(), b.dispatcher().channels().get(c)?.id)))
        .collect();
    // Anything handed to a gateway for the worker since it began.
    let reached = |contact: u32| {
        let Ok(Some(c)) = b.directory().contact(contact) else {
            return false;
        };
        let r = c.recipient();
        channels.iter().any(|(name, id)| {
            let address = r.addresses.get(name).or(r.phone.as_ref());
            address.is_some_and(|a| {
                b.store()
                    .last_sent(*id, a)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.at_ms >= v.created_ms)
            })
        })
    };
    b.validations()
        .outcomes(v, &b.config().dispatch.default_country, now, &reached)
}

/// Ask every selected worker to confirm or correct their facility and
/// phone number.
#[utoipa::path(post, path = "/v1/validations", tag = "validations", security(("token" = [])),
    request_body = ValidationSpec,
    responses(
        (status = 201, description = "Started: every selected worker with an address is asked", body = ValidationCreated),
        (status = 400, description = "Invalid: the message names the element", body = super::error::ErrorBody),
    ))]
pub async fn create_validation(
    State(api): State<Arc<Api>>,
    ApiJson(spec): ApiJson<ValidationSpec>,
) -> Result<Response, ApiError> {
    let channels = api.channels_for(&spec.channels)?;
    let now = api.broker.dispatcher().now_ms();
    let validations = Arc::clone(api.broker.validations());
    let (record, out) =
        tokio::task::spawn_blocking(move || validations.create(spec, channels, now)).await??;
    let asked = out.len();
    super::surveys::first_questions(&api, out, &format!("validation v{}", record.id)).await?;
    let id = format!("v{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/validations/{id}"))],
        Json(ValidationCreated {
            id,
            survey: format!("s{}", record.survey),
            asked,
            no_address: record.no_address.len(),
        }),
    )
        .into_response())
}

/// A validation, listed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValidationSummary {
    pub id: String,
    pub survey: String,
    pub selector: String,
    pub created_ms: u64,
}

/// Validations, newest first.
#[utoipa::path(get, path = "/v1/validations", tag = "validations", security(("token" = [])),
    responses((status = 200, body = Vec<ValidationSummary>)))]
pub async fn list_validations(State(api): State<Arc<Api>>) -> Json<Vec<ValidationSummary>> {
    Json(
        api.broker
            .validations()
            .list()
            .iter()
            .map(|v| ValidationSummary {
                id: format!("v{}", v.id),
                survey: format!("s{}", v.survey),
                selector: v.selector.clone(),
                created_ms: v.created_ms,
            })
            .collect(),
    )
}

/// The national data-quality report of a validation.
#[utoipa::path(get, path = "/v1/validations/{id}", tag = "validations", security(("token" = [])),
    params(("id" = String, Path, description = "`v2`")),
    responses((status = 200, body = ValidationReport), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_validation(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<ValidationReport>, ApiError> {
    let v = found(&api, &id)?;
    let reader = Arc::clone(&api);
    let report = tokio::task::spawn_blocking(move || -> crate::Result<ValidationReport> {
        let b = &reader.broker;
        let all = outcomes(&reader, &v)?;
        let written: BTreeMap<u32, WriteBack> = b
            .validations()
            .written(v.id)?
            .into_iter()
            .map(|w| (w.contact, w))
            .collect();
        let mut write_back = BTreeMap::new();
        for w in written.values() {
            *write_back.entry(w.result.clone()).or_default() += 1;
        }
        let by_district = validation::by_place(b.directory(), &all, "district")?
            .into_iter()
            .map(|(place, t)| DistrictCounts {
                name: place.as_ref().map(|p| p.1.clone()),
                place: place.map(|p| p.0),
                counts: t.into(),
            })
            .collect();
        let survey = b.validations().survey_of(&v)?;
        let totals = validation::totals(&all).into();
        let corrections = all
            .into_iter()
            .filter(|o| o.status == Status::Corrected)
            .take(1000)
            .map(|o| {
                Ok(CorrectionView {
                    source: b
                        .directory()
                        .contact(o.contact)?
                        .and_then(|c| c.parts.first().map(|p| p.resource.clone())),
                    write_back: written.get(&o.contact).cloned(),
                    outcome: o,
                })
            })
            .collect::<crate::Result<Vec<_>>>()?;
        Ok(ValidationReport {
            id: format!("v{}", v.id),
            survey: format!("s{}", v.survey),
            selector: v.selector.clone(),
            created_ms: v.created_ms,
            state: if b.dispatcher().now_ms() > survey.deadline_ms {
                "closed"
            } else {
                "open"
            },
            totals,
            by_district,
            corrections,
            write_back,
        })
    })
    .await??;
    Ok(Json(report))
}

/// The corrections as a FHIR transaction Bundle (each a `PUT` with
/// `ifMatch`), read from and checked against the sources now, for a
/// registry to apply itself. Workers in conflict, with nothing to
/// write or with no source are left out: `GET …/write-back` lists them
/// with the reason.
#[utoipa::path(get, path = "/v1/validations/{id}/bundle", tag = "validations", security(("token" = [])),
    params(("id" = String, Path, description = "`v2`")),
    responses(
        (status = 200, description = "A transaction Bundle", content_type = "application/fhir+json"),
        (status = 404, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn validation_bundle(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Fhir {
    async {
        let v = found(&api, &id)?;
        let (planned, _, _) = planned(&api, &v).await?;
        Ok((StatusCode::OK, validation::bundle(&planned), None))
    }
    .await
    .into()
}

/// What writing back did (or, previewed, would do) for each corrected
/// worker.
#[derive(Debug, Serialize, ToSchema)]
pub struct WriteBackReport {
    pub results: Vec<WriteBack>,
    pub totals: BTreeMap<String, u64>,
}

impl WriteBackReport {
    fn of(results: Vec<WriteBack>) -> Self {
        let mut totals = BTreeMap::new();
        for r in &results {
            *totals.entry(r.result.clone()).or_default() += 1;
        }
        WriteBackReport { results, totals }
    }
}

/// The validation's outcomes, planned against the sources now: the
/// changes, the workers with none (and why), and the time.
async fn planned(
    api: &Arc<Api>,
    v: &Arc<ValidationRecord>,
) -> Result<(Vec<Planned>, Vec<WriteBack>, u64), ApiError> {
    let reader = Arc::clone(api);
    let record = Arc::clone(v);
    let all = tokio::task::spawn_blocking(move || outcomes(&reader, &record)).await??;
    let now = api.broker.dispatcher().now_ms();
    let (planned, not) = api
        .broker
        .validations()
        .plan(&all, &api.broker.config().directory, now)
        .await;
    Ok((planned, not, now))
}

/// What a write-back would do now, writing nothing: each corrected
/// worker's changes read from and checked against the sources, as
/// `planned` (the `PUT`s and the versions they must match), `conflict`,
/// `skipped` or `failed` with the reason. Workers already written are
/// left out. The same checks as the write-back and the Bundle export.
#[utoipa::path(get, path = "/v1/validations/{id}/write-back", tag = "validations", security(("token" = [])),
    params(("id" = String, Path, description = "`v2`")),
    responses((status = 200, body = WriteBackReport), (status = 404, body = super::error::ErrorBody)))]
pub async fn preview_write_back(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<WriteBackReport>, ApiError> {
    let v = found(&api, &id)?;
    let (planned, not, now) = planned(&api, &v).await?;
    let results = api
        .broker
        .validations()
        .preview(v.id, planned, not, now)
        .await?;
    Ok(Json(WriteBackReport::of(results)))
}

/// Write the corrections back to the FHIR sources: `PUT` each worker's
/// Practitioner (phone) and PractitionerRole (facility) with `If-Match`
/// on the version the directory holds; a record changed at the source
/// since is a conflict, reported, not overwritten. Workers already
/// written are left alone, so it can be run again as answers come in.
#[utoipa::path(post, path = "/v1/validations/{id}/write-back", tag = "validations", security(("token" = [])),
    params(("id" = String, Path, description = "`v2`")),
    responses((status = 200, body = WriteBackReport), (status = 404, body = super::error::ErrorBody)))]
pub async fn write_back(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<WriteBackReport>, ApiError> {
    let v = found(&api, &id)?;
    let (planned, not, now) = planned(&api, &v).await?;
    let results = api
        .broker
        .validations()
        .write_back(v.id, planned, not, &api.broker.config().directory, now)
        .await?;
    Ok(Json(WriteBackReport::of(results)))
}
