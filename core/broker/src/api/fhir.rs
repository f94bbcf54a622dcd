//! The FHIR R4 facade under `/fhir/r4`, as mHero's FHIR connector (emNutt)
//! and IHE mACM (ITI-84) use it.
//!
//! - `POST /fhir/r4/CommunicationRequest`: a campaign. Recipients are
//!   `Practitioner/…` or `Patient/…` references (looked up in the
//!   directory), `Group/…` references, contained resources with a phone
//!   `telecom` (`#p1`), or a selector in the extension
//!   [`SELECTOR_EXTENSION`]. `payload.contentString` is the text (more
//!   payloads with the [`LANGUAGE_EXTENSION`] are its language variants;
//!   `payload.contentAttachment` a file by `url` and `contentType`),
//!   `priority` picks the lane (`stat` → emergency, `asap` and `urgent` →
//!   high, `routine` → normal), `occurrenceDateTime` schedules it, and
//!   `medium` codes name the channels (else `api.default_channels`, else every
//!   configured channel).
//! - `GET /fhir/r4/CommunicationRequest/{id}`: its status (`active` while
//!   it sends, `completed`, `revoked` once cancelled), with its counts.
//! - `GET /fhir/r4/Communication?based-on=CommunicationRequest/{id}`: one
//!   `Communication` per delivery, with its status, `sent` (when it left
//!   the queue) and `received` (when the gateway reported it delivered),
//!   paged with `_count` and `_offset`; `GET /fhir/r4/Communication/{id}`
//!   reads one.
//! - `POST /fhir/r4`: a `transaction` or `batch` Bundle of directory
//!   resources, imported through a mapper plugin.
//! - `GET /fhir/r4/metadata`: the CapabilityStatement.
//!
//! Every error is an `OperationOutcome`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use mhero_proto::{CampaignId, DeliveryStatus, Lane};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Api;
use super::error::ApiError;
use crate::audience::Recipient;
use crate::dispatch::{
    Attachment, AudienceSpec, Body, CampaignRecord, CampaignSpec, DeliveryView, Progress,
};
use crate::error::Error;

/// A selector for the audience, instead of or beside `recipient`.
pub const SELECTOR_EXTENSION: &str = "https://mhero.org/fhir/StructureDefinition/audience-selector";
/// The language (BCP 47) of one `payload`: a variant of the text.
pub const LANGUAGE_EXTENSION: &str = "https://mhero.org/fhir/StructureDefinition/payload-language";
/// The campaign's counts, on a `CommunicationRequest` read back.
pub const PROGRESS_EXTENSION: &str = "https://mhero.org/fhir/StructureDefinition/delivery-progress";

/// The FHIR media type.
const FHIR_JSON: &str = "application/fhir+json";

/// An error as FHIR says it: an `OperationOutcome`, with the API's code
/// in `details.text`.
pub fn outcome(e: &ApiError) -> Response {
    let code = match e.status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "security",
        StatusCode::NOT_FOUND => "not-found",
        StatusCode::PAYLOAD_TOO_LARGE => "too-long",
        StatusCode::CONFLICT => "conflict",
        StatusCode::SERVICE_UNAVAILABLE => "transient",
        s if s.is_server_error() => "exception",
        _ => "invalid",
    };
    let body = json!({
        "resourceType": "OperationOutcome",
        "issue": [{
            "severity": "error",
            "code": code,
            "details": {"text": e.code},
            "diagnostics": e.message,
        }]
    });
    let mut response = fhir_json(e.status, &body);
    if e.status == StatusCode::PAYLOAD_TOO_LARGE {
        // The rest of the body was not read: the connection cannot carry
        // another request.
        response.headers_mut().insert(
            header::CONNECTION,
            axum::http::HeaderValue::from_static("close"),
        );
    }
    response
}

fn fhir_json(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, FHIR_JSON)],
        serde_json::to_vec(body).unwrap_or_default(),
    )
        .into_response()
}

/// A FHIR route's answer: the resource, or an `OperationOutcome`.
pub struct Fhir(Result<(StatusCode, Value, Option<String>), ApiError>);

impl IntoResponse for Fhir {
    fn into_response(self) -> Response {
        match self.0 {
            Ok((status, body, location)) => {
                let mut r = fhir_json(status, &body);
                if let Some(l) = location
                    && let Ok(v) = l.parse()
                {
                    r.headers_mut().insert(header::LOCATION, v);
                }
                r
            }
            Err(e) => outcome(&e),
        }
    }
}

impl From<Result<(StatusCode, Value, Option<String>), ApiError>> for Fhir {
    fn from(r: Result<(StatusCode, Value, Option<String>), ApiError>) -> Self {
        Fhir(r)
    }
}

/// A JSON resource from a body, or the reason it is not one.
pub(crate) fn resource(body: Result<Bytes, BytesRejection>, kind: &str) -> Result<Value, ApiError> {
    let body = body.map_err(|r| super::error::body_rejection(&r))?;
    let value: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?;
    match value.get("resourceType").and_then(Value::as_str) {
        Some(t) if t == kind => Ok(value),
        Some(t) => Err(ApiError::invalid(format!(
            "resourceType is {t}; this endpoint takes a {kind}"
        ))),
        None => Err(ApiError::invalid(format!(
            "not a FHIR resource (no resourceType); this endpoint takes a {kind}"
        ))),
    }
}

fn lane(priority: Option<&str>) -> Result<Lane, ApiError> {
    match priority {
        None | Some("routine") => Ok(Lane::Normal),
        Some("urgent" | "asap") => Ok(Lane::High),
        Some("stat") => Ok(Lane::Emergency),
        Some(p) => Err(ApiError::invalid(format!(
            "priority: {p:?} is not a FHIR request priority (routine, urgent, asap, stat)"
        ))),
    }
}

fn priority(lane: Lane) -> &'static str {
    match lane {
        Lane::Emergency => "stat",
        Lane::High => "urgent",
        Lane::Normal | Lane::Bulk => "routine",
    }
}

fn instant(ms: u64) -> String {
    jiff::Timestamp::from_millisecond(ms as i64)
        .map_or_else(|_| String::new(), |t| format!("{t:.3}"))
}

fn parse_datetime(field: &str, s: &str) -> Result<u64, ApiError> {
    let t: jiff::Timestamp = s.parse().map_err(|e| {
        ApiError::invalid(format!(
            "{field}: {s:?} is not a dateTime with a time and a time zone ({e})"
        ))
    })?;
    u64::try_from(t.as_millisecond())
        .map_err(|_| ApiError::invalid(format!("{field}: {s:?} is before 1970")))
}

fn extension<'a>(value: &'a Value, url: &str) -> Option<&'a Value> {
    value
        .get("extension")?
        .as_array()?
        .iter()
        .find(|e| e.get("url").and_then(Value::as_str) == Some(url))
}

/// The phone number of a contained resource's `telecom`.
fn contained_phone(request: &Value, id: &str) -> Option<String> {
    let resource = request
        .get("contained")?
        .as_array()?
        .iter()
        .find(|r| r.get("id").and_then(Value::as_str) == Some(id))?;
    resource
        .get("telecom")?
        .as_array()?
        .iter()
        .find(|t| {
            matches!(
                t.get("system").and_then(Value::as_str),
                Some("phone" | "sms")
            )
        })
        .and_then(|t| t.get("value")?.as_str())
        .map(str::to_string)
}

/// Whether turning `request` into a campaign looks anything up in the
/// directory: any recipient that is not a contained resource.
fn reads_directory(request: &Value) -> bool {
    request
        .get("recipient")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|r| {
            !r.get("reference")
                .and_then(Value::as_str)
                .is_some_and(|s| s.starts_with('#'))
        })
}

/// A `CommunicationRequest` as a campaign. Directory look-ups read the
/// store: call it on a blocking thread.
fn campaign_of(api: &Api, request: &Value) -> Result<CampaignSpec, ApiError> {
    match request.get("status").and_then(Value::as_str) {
        Some("active") | None => {}
        Some(s) => {
            return Err(ApiError::invalid(format!(
                "status: {s:?}; only an active CommunicationRequest is sent"
            )));
        }
    }
    let lane = lane(request.get("priority").and_then(Value::as_str))?;
    // The text, and its variants per language.
    let mut default = None;
    let mut variants = BTreeMap::new();
    let mut attachments = Vec::new();
    for (i, p) in request
        .get("payload")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if let Some(a) = p.get("contentAttachment") {
            attachments.push(attachment(i, a)?);
            continue;
        }
        let Some(text) = p.get("contentString").and_then(Value::as_str) else {
            return Err(ApiError::invalid(format!(
                "payload[{i}]: contentString or contentAttachment is sent (references are not)"
            )));
        };
        match extension(p, LANGUAGE_EXTENSION).and_then(|e| e.get("valueCode")?.as_str()) {
            Some(lang) => {
                variants.insert(lang.to_string(), text.to_string());
            }
            None if default.is_none() => default = Some(text.to_string()),
            None => {
                return Err(ApiError::invalid(format!(
                    "payload[{i}]: a second text without a language (give each variant the {LANGUAGE_EXTENSION} extension)"
                )));
            }
        }
    }
    // Files alone need no text (they go without a caption).
    let default = match default.or_else(|| variants.values().next().cloned()) {
        Some(text) => text,
        None if !attachments.is_empty() => String::new(),
        None => {
            return Err(ApiError::invalid(
                "payload: a contentString (or a contentAttachment) is required",
            ));
        }
    };

    // Who receives it.
    let directory = api.broker.directory();
    let mut recipients = Vec::new();
    let mut groups = Vec::new();
    let mut unknown = Vec::new();
    let mut seen = BTreeSet::new();
    for (i, r) in request
        .get("recipient")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let Some(reference) = r.get("reference").and_then(Value::as_str) else {
            return Err(ApiError::invalid(format!(
                "recipient[{i}]: a reference is required"
            )));
        };
        if let Some(id) = reference.strip_prefix('#') {
            match contained_phone(request, id) {
                Some(phone) => recipients.push(Recipient {
                    phone: Some(phone),
                    ..Recipient::default()
                }),
                None => {
                    return Err(ApiError::invalid(format!(
                        "recipient[{i}]: contained resource {id:?} has no phone telecom"
                    )));
                }
            }
            continue;
        }
        match reference.split_once('/') {
            Some(("Group", id)) => groups.push(format!("group:\"Group/{}\"", id.replace('"', ""))),
            Some(("Practitioner" | "Patient" | "PractitionerRole" | "RelatedPerson", _)) => {
                match directory.find(reference)? {
                    Some(contact) => {
                        if seen.insert(contact.number) {
                            recipients.push(contact.recipient());
                        }
                    }
                    None => unknown.push(reference.to_string()),
                }
            }
            _ => {
                return Err(ApiError::invalid(format!(
                    "recipient[{i}]: {reference:?} is not a Practitioner, Patient, Group or contained resource"
                )));
            }
        }
    }
    if !unknown.is_empty() {
        return Err(ApiError::invalid(format!(
            "recipient: not in the directory: {} (sync or import them first)",
            unknown.join(", ")
        )));
    }
    let selector = extension(request, SELECTOR_EXTENSION)
        .and_then(|e| e.get("valueString")?.as_str())
        .map(|s| format!("({s})"));
    let terms: Vec<String> = groups.into_iter().chain(selector).collect();
    let audience = match (recipients.is_empty(), terms.is_empty()) {
        (_, true) if !recipients.is_empty() => AudienceSpec::Recipients(recipients),
        (true, false) => AudienceSpec::Selector(terms.join(" OR ")),
        (false, false) => {
            // Both: the selected contacts join the named ones.
            let (selected, _) = directory.select(&terms.join(" OR "))?;
            for number in selected {
                if seen.insert(number)
                    && let Some(contact) = directory.contact(number)?
                {
                    recipients.push(contact.recipient());
                }
            }
            AudienceSpec::Recipients(recipients)
        }
        _ => {
            return Err(ApiError::invalid(format!(
                "recipient: at least one is required (or a selector in the {SELECTOR_EXTENSION} extension)"
            )));
        }
    };

    // Through which channels.
    let configured: Vec<String> = api.broker.dispatcher().channels().keys().cloned().collect();
    let mut channels: Vec<String> = request
        .get("medium")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("coding")?.as_array())
        .flatten()
        .filter_map(|c| c.get("code")?.as_str().map(str::to_string))
        .collect();
    if channels.is_empty() {
        channels = if api.config.default_channels.is_empty() {
            configured
        } else {
            api.config.default_channels.clone()
        };
    }

    let name = request
        .get("identifier")
        .and_then(Value::as_array)
        .and_then(|ids| ids.first())
        .and_then(|id| id.get("value")?.as_str())
        .map_or_else(
            || format!("CommunicationRequest ({})", priority(lane)),
            |v| format!("CommunicationRequest {v}"),
        );
    let start_at_ms = match request.get("occurrenceDateTime").and_then(Value::as_str) {
        Some(s) => Some(parse_datetime("occurrenceDateTime", s)?),
        None => None,
    };
    let expires_at_ms = match request
        .get("occurrencePeriod")
        .and_then(|p| p.get("end"))
        .and_then(Value::as_str)
    {
        Some(s) => Some(parse_datetime("occurrencePeriod.end", s)?),
        None => None,
    };
    let start_at_ms = match request
        .get("occurrencePeriod")
        .and_then(|p| p.get("start"))
        .and_then(Value::as_str)
    {
        Some(s) if start_at_ms.is_none() => Some(parse_datetime("occurrencePeriod.start", s)?),
        _ => start_at_ms,
    };
    Ok(CampaignSpec {
        name,
        lane,
        body: Body {
            default,
            variants,
            attachments,
        },
        channels,
        audience,
        expires_at_ms,
        start_at_ms,
    })
}

/// A payload's `contentAttachment` (FHIR `Attachment`): a file by `url`
/// with its `contentType`; `title` names a document. Inline `data` is not
/// taken: gateways fetch files by URL.
fn attachment(i: usize, a: &Value) -> Result<Attachment, ApiError> {
    let field = |f: &str| a.get(f).and_then(Value::as_str).map(str::to_string);
    if a.get("data").is_some() {
        return Err(ApiError::invalid(format!(
            "payload[{i}].contentAttachment: inline data is not sent; give a url the gateway can fetch"
        )));
    }
    let (Some(url), Some(content_type)) = (field("url"), field("contentType")) else {
        return Err(ApiError::invalid(format!(
            "payload[{i}].contentAttachment: url and contentType are required"
        )));
    };
    Ok(Attachment {
        url,
        content_type,
        filename: field("title"),
    })
}

/// A campaign as a `CommunicationRequest`: its spec as submitted or as
/// stored, and its progress.
fn communication_request(
    id: CampaignId,
    spec: &CampaignSpec,
    updated_ms: u64,
    progress: &Progress,
) -> Value {
    let status = match progress.state {
        "cancelled" => "revoked",
        _ if progress.done => "completed",
        _ => "active",
    };
    let mut payload = vec![json!({"contentString": spec.body.default})];
    for (lang, text) in &spec.body.variants {
        payload.push(json!({
            "extension": [{"url": LANGUAGE_EXTENSION, "valueCode": lang}],
            "contentString": text,
        }));
    }
    for a in &spec.body.attachments {
        let mut attachment = json!({"url": a.url, "contentType": a.content_type});
        if let Some(title) = &a.filename {
            attachment["title"] = json!(title);
        }
        payload.push(json!({"contentAttachment": attachment}));
    }
    let counts: Vec<Value> = [
        ("total", progress.total),
        ("queued", progress.queued),
        ("sent", progress.sent + progress.wired),
        ("delivered", progress.delivered + progress.read),
        ("failed", progress.failed + progress.dead),
        ("expired", progress.expired),
        ("cancelled", progress.cancelled),
    ]
    .iter()
    .map(|(k, v)| json!({"url": k, "valueUnsignedInt": v}))
    .collect();
    let mut r = json!({
        "resourceType": "CommunicationRequest",
        "id": id.to_string(),
        "meta": {"lastUpdated": instant(updated_ms)},
        "status": status,
        "priority": priority(spec.lane),
        "authoredOn": instant(progress.created_ms),
        "payload": payload,
        "medium": spec.channels.iter().map(|c| json!({"coding": [{"code": c}]})).collect::<Vec<_>>(),
        "extension": [{"url": PROGRESS_EXTENSION, "extension": counts}],
    });
    if let AudienceSpec::Frozen { selector, .. } | AudienceSpec::Selector(selector) = &spec.audience
    {
        r["extension"]
            .as_array_mut()
            .expect("an array above")
            .push(json!({"url": SELECTOR_EXTENSION, "valueString": selector}));
    }
    if let Some(t) = spec.start_at_ms {
        r["occurrenceDateTime"] = json!(instant(t));
    }
    r
}

fn read_campaign(api: &Api, id: CampaignId) -> Result<Value, ApiError> {
    let not_found = || ApiError::not_found(format!("no CommunicationRequest {id}"));
    let bytes = api.broker.store().campaign(id)?.ok_or_else(not_found)?;
    let record = CampaignRecord::decode(&bytes).map_err(|e| Error::Internal(e.to_string()))?;
    let progress = api.broker.dispatcher().progress(id).ok_or_else(not_found)?;
    let updated = record
        .stopped_ms
        .or(record.finished_ms)
        .unwrap_or(record.created_ms);
    Ok(communication_request(id, &record.spec, updated, &progress))
}

/// `POST /fhir/r4/CommunicationRequest`
#[utoipa::path(post, path = "/fhir/r4/CommunicationRequest", tag = "fhir", security(("token" = [])),
    request_body(content = Object, content_type = "application/fhir+json", description = "A FHIR R4 CommunicationRequest"),
    responses(
        (status = 201, description = "The CommunicationRequest as stored, with its id", content_type = "application/fhir+json"),
        (status = 200, description = "A retry with the same Idempotency-Key: the CommunicationRequest the first made; nothing is sent again", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome naming what is wrong", content_type = "application/fhir+json"),
    ))]
pub async fn create_communication_request(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Fhir {
    async {
        let request = resource(body, "CommunicationRequest")?;
        // With an Idempotency-Key, the resource as sent identifies the
        // request (the campaign made of it depends on the directory then).
        let sent = headers
            .contains_key("idempotency-key")
            .then(|| serde_json::to_vec(&request).unwrap_or_default());
        // Directory look-ups read the store, on a blocking thread; a
        // request whose recipients are all contained needs none.
        let spec = if reads_directory(&request) {
            let reader = Arc::clone(&api);
            tokio::task::spawn_blocking(move || campaign_of(&reader, &request)).await??
        } else {
            campaign_of(&api, &request)?
        };
        let submitted = api
            .submit(&headers, spec.clone(), |_| {
                let mut bytes = b"POST /fhir/r4/CommunicationRequest\n".to_vec();
                bytes.extend(sent.unwrap_or_default());
                bytes
            })
            .await?;
        let id = submitted.id;
        if submitted.replayed {
            let reader = Arc::clone(&api);
            let value = tokio::task::spawn_blocking(move || read_campaign(&reader, id)).await??;
            return Ok((
                StatusCode::OK,
                value,
                Some(format!("/fhir/r4/CommunicationRequest/{id}")),
            ));
        }
        // Just accepted, it is in memory: no read of the store.
        let progress = api
            .broker
            .dispatcher()
            .live_progress(id)
            .ok_or_else(|| Error::Internal(format!("campaign {id} vanished after submit")))?;
        let created = communication_request(id, &spec, progress.created_ms, &progress);
        Ok((
            StatusCode::CREATED,
            created,
            Some(format!("/fhir/r4/CommunicationRequest/{id}")),
        ))
    }
    .await
    .into()
}

/// `GET /fhir/r4/CommunicationRequest/{id}`
#[utoipa::path(get, path = "/fhir/r4/CommunicationRequest/{id}", tag = "fhir", security(("token" = [])),
    params(("id" = String, Path, description = "Campaign id (`c12`)")),
    responses(
        (status = 200, description = "Its status and counts", content_type = "application/fhir+json"),
        (status = 404, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn read_communication_request(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Fhir {
    async {
        let id: CampaignId = id
            .parse()
            .map_err(|e: mhero_proto::ParseIdError| ApiError::not_found(e.to_string()))?;
        let value = tokio::task::spawn_blocking(move || read_campaign(&api, id)).await??;
        Ok((StatusCode::OK, value, None))
    }
    .await
    .into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportQuery {
    /// The source the contacts belong to (default `fhir-api`).
    pub source: Option<String>,
    /// The mapper plugin (default `ihris-practitioner`).
    pub mapper: Option<String>,
}

/// `POST /fhir/r4`: a transaction or batch Bundle into the directory.
#[utoipa::path(post, path = "/fhir/r4", tag = "fhir", security(("token" = [])),
    params(
        ("source" = Option<String>, Query, description = "The source the contacts belong to (default fhir-api)"),
        ("mapper" = Option<String>, Query, description = "The mapper plugin (default ihris-practitioner)"),
    ),
    request_body(content = Object, content_type = "application/fhir+json", description = "A transaction or batch Bundle of directory resources"),
    responses(
        (status = 200, description = "A transaction-response or batch-response Bundle, one entry per entry", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn import_bundle(
    State(api): State<Arc<Api>>,
    query: Result<Query<ImportQuery>, QueryRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Fhir {
    async {
        let Query(query) = query.map_err(|r| super::error::query_rejection(&r))?;
        let bundle = resource(body, "Bundle")?;
        let kind = match bundle.get("type").and_then(Value::as_str) {
            Some("transaction") => "transaction-response",
            Some("batch") => "batch-response",
            other => {
                return Err(ApiError::invalid(format!(
                    "Bundle.type is {other:?}; this endpoint takes a transaction or a batch"
                )));
            }
        };
        let source = query.source.unwrap_or_else(|| "fhir-api".into());
        let mapper_name = query.mapper.unwrap_or_else(|| "ihris-practitioner".into());
        let mapper = api
            .broker
            .plugins()
            .require(&mapper_name, crate::plugin::Kind::FhirMapper)
            .map_err(|e| ApiError::invalid(format!("mapper: {e}")))?;
        let entries = bundle
            .get("entry")
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        let directory = Arc::clone(api.broker.directory());
        let country = api.broker.config().dispatch.default_country.clone();
        let text = bundle.to_string();
        let (report, _) = tokio::task::spawn_blocking(move || {
            crate::directory::sync::import_document(&directory, &mapper, &source, &country, &text)
        })
        .await??;
        let mut problems: BTreeMap<u32, Vec<String>> = BTreeMap::new();
        for p in &report.problems {
            if let Some(i) = p.index {
                problems.entry(i).or_default().push(p.message.clone());
            }
        }
        let entry: Vec<Value> = (0..entries as u32)
            .map(|i| match problems.get(&i) {
                None => json!({"response": {"status": "200 OK"}}),
                Some(messages) => json!({"response": {
                    "status": "422 Unprocessable Entity",
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": messages.iter().map(|m| json!({"severity": "error", "code": "invalid", "diagnostics": m})).collect::<Vec<_>>(),
                    }
                }}),
            })
            .collect();
        Ok((
            StatusCode::OK,
            json!({"resourceType": "Bundle", "type": kind, "entry": entry}),
            None,
        ))
    }
    .await
    .into()
}

/// A delivery's status as a FHIR `Communication`'s (`EventStatus`).
fn event_status(status: DeliveryStatus) -> &'static str {
    match status {
        DeliveryStatus::Queued => "preparation",
        DeliveryStatus::Wired | DeliveryStatus::Sent => "in-progress",
        DeliveryStatus::Delivered | DeliveryStatus::Read => "completed",
        DeliveryStatus::Failed | DeliveryStatus::Expired => "not-done",
        DeliveryStatus::Cancelled => "stopped",
    }
}

/// The broker's own status of a delivery, on a `Communication`.
pub const DELIVERY_STATUS_EXTENSION: &str =
    "https://mhero.org/fhir/StructureDefinition/delivery-status";

fn communication(campaign: CampaignId, d: DeliveryView) -> Value {
    let id = mhero_proto::DeliveryId::new(campaign, d.index).to_string();
    let mut c = json!({
        "resourceType": "Communication",
        "id": id,
        "basedOn": [{"reference": format!("CommunicationRequest/{campaign}")}],
        "status": event_status(d.status),
        "extension": [{"url": DELIVERY_STATUS_EXTENSION, "valueCode": d.status.as_str()}],
    });
    if let Some(r) = &d.recipient {
        let address = match &d.channel {
            Some(ch) => r.address(ch).map(str::to_string),
            None => r.phone.clone(),
        };
        if let Some(a) = address {
            let (system, value) = if a.starts_with('+') {
                ("urn:ietf:rfc:3966", format!("tel:{a}"))
            } else {
                ("https://mhero.org/fhir/NamingSystem/channel-address", a)
            };
            c["recipient"] = json!([{"identifier": {"system": system, "value": value}}]);
        }
    }
    if let Some(ch) = &d.channel {
        c["medium"] = json!([{"coding": [{"code": ch}]}]);
    }
    let handed_over = matches!(
        d.status,
        DeliveryStatus::Wired
            | DeliveryStatus::Sent
            | DeliveryStatus::Delivered
            | DeliveryStatus::Read
    );
    if handed_over && let Some(t) = d.sent_ms {
        c["sent"] = json!(instant(t));
    }
    if matches!(d.status, DeliveryStatus::Delivered | DeliveryStatus::Read)
        && let Some(t) = d.updated_ms
    {
        c["received"] = json!(instant(t));
    }
    if let Some(why) = d.reason.or(d.withheld) {
        c["statusReason"] = json!({"text": why});
    }
    if d.dead {
        c["extension"]
            .as_array_mut()
            .expect("an array above")
            .push(json!({"url": DELIVERY_STATUS_EXTENSION, "valueCode": "dead-letter"}));
    }
    c
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommunicationQuery {
    #[serde(rename = "based-on")]
    pub based_on: Option<String>,
    #[serde(rename = "_count")]
    pub count: Option<u32>,
    #[serde(rename = "_offset")]
    pub offset: Option<u32>,
}

/// The base URL links in a search Bundle start with.
pub(crate) fn base_url(headers: &HeaderMap) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost");
    format!("http://{host}/fhir/r4")
}

/// A search page's link: `{base}/{resource}?` and the query pairs,
/// encoded.
pub(crate) fn page_url(base: &str, resource: &str, pairs: &[(&str, String)]) -> String {
    let u = format!("{base}/{resource}");
    match reqwest::Url::parse(&u) {
        Ok(mut url) => {
            url.query_pairs_mut().extend_pairs(pairs);
            url.to_string()
        }
        Err(_) => u,
    }
}

/// A searchset Bundle: its `self` link, a `next` link while more remain,
/// and its entries (see [`search_entry`]).
pub fn searchset(self_url: String, next_url: Option<String>, entry: Vec<Value>) -> Value {
    let mut link = vec![json!({"relation": "self", "url": self_url})];
    if let Some(next) = next_url {
        link.push(json!({"relation": "next", "url": next}));
    }
    json!({"resourceType": "Bundle", "type": "searchset", "link": link, "entry": entry})
}

/// One entry of a searchset: the resource, where it is read, and whether
/// it matched the search (`match`) or came with a match (`include`).
pub fn search_entry(full_url: String, resource: Value, mode: &str) -> Value {
    json!({"fullUrl": full_url, "resource": resource, "search": {"mode": mode}})
}

/// `GET /fhir/r4/Communication?based-on=CommunicationRequest/{id}`
#[utoipa::path(get, path = "/fhir/r4/Communication", tag = "fhir", security(("token" = [])),
    params(
        ("based-on" = String, Query, description = "CommunicationRequest/{id} (required)"),
        ("_count" = Option<u32>, Query, description = "Page size (default 100, at most 1000)"),
        ("_offset" = Option<u32>, Query, description = "First delivery of the page (default 0)"),
    ),
    responses(
        (status = 200, description = "A searchset Bundle: one Communication per delivery, with a next link while more remain", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn search_communications(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<CommunicationQuery>, QueryRejection>,
) -> Fhir {
    async {
        let Query(query) = query.map_err(|r| super::error::query_rejection(&r))?;
        let based_on = query.based_on.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "based-on=CommunicationRequest/{id} is required: Communications are searched by the request they answer",
            )
        })?;
        let raw = based_on.strip_prefix("CommunicationRequest/").unwrap_or(&based_on);
        let campaign: CampaignId = raw.parse().map_err(|e: mhero_proto::ParseIdError| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("based-on: {e}"))
        })?;
        let count = query.count.unwrap_or(100).clamp(1, 1000);
        let offset = query.offset.unwrap_or(0);
        let reader = Arc::clone(&api);
        let (found, lab) = tokio::task::spawn_blocking(move || -> crate::Result<_> {
            let found = reader.broker.dispatcher().deliveries(campaign, offset, count)?;
            let lab = crate::workflows::lab::LabResults::new(Arc::clone(reader.broker.store().engine()))
                .of_campaign(campaign.0)?;
            Ok((found, lab))
        })
        .await??;
        let (total, views) =
            found.ok_or_else(|| ApiError::not_found(format!("no CommunicationRequest {campaign}")))?;
        let base = base_url(&headers);
        let end = offset.saturating_add(views.len() as u32);
        let page = |from: u32| {
            format!("{base}/Communication?based-on=CommunicationRequest/{campaign}&_count={count}&_offset={from}")
        };
        let next = (end < total).then(|| page(end));
        let mut entry: Vec<Value> = views
            .into_iter()
            .map(|d| {
                let id = mhero_proto::DeliveryId::new(campaign, d.index);
                search_entry(
                    format!("{base}/Communication/{id}"),
                    communication(campaign, d),
                    "match",
                )
            })
            .collect();
        // A lab result's acknowledgement: the clinician's reply, on the
        // last page.
        if end >= total
            && let Some(ack) = lab.as_ref().and_then(|l| Some((l, l.ack.as_ref()?)))
        {
            let (record, ack) = ack;
            let mut c = json!({
                "resourceType": "Communication",
                "id": format!("{campaign}-ack"),
                "basedOn": [{"reference": format!("CommunicationRequest/{campaign}")}],
                "inResponseTo": [{"reference": format!("Communication/{}", mhero_proto::DeliveryId::new(campaign, 0))}],
                "status": "completed",
                "category": [{"coding": [{"system": "https://mhero.org/fhir/CodeSystem/message-kind", "code": "lab-result-acknowledgement"}]}],
                "about": [{"identifier": {"value": record.report}}],
                "received": instant(ack.at_ms),
                "payload": [{"contentString": ack.text}],
            });
            if let Some(r) = &record.requester {
                c["sender"] = json!({"reference": r});
            }
            entry.push(search_entry(
                format!("{base}/Communication/{campaign}-ack"),
                c,
                "include",
            ));
        }
        let mut bundle = searchset(page(offset), next, entry);
        bundle["total"] = json!(total);
        Ok((StatusCode::OK, bundle, None))
    }
    .await
    .into()
}

/// `GET /fhir/r4/Communication/{id}`
#[utoipa::path(get, path = "/fhir/r4/Communication/{id}", tag = "fhir", security(("token" = [])),
    params(("id" = String, Path, description = "Delivery id (`c12-40017`)")),
    responses(
        (status = 200, description = "The delivery as a Communication", content_type = "application/fhir+json"),
        (status = 404, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn read_communication(State(api): State<Arc<Api>>, Path(id): Path<String>) -> Fhir {
    async {
        let not_found = || ApiError::not_found(format!("no Communication {id}"));
        let delivery: mhero_proto::DeliveryId = id.parse().map_err(|_| not_found())?;
        let reader = Arc::clone(&api);
        let views = tokio::task::spawn_blocking(move || {
            reader
                .broker
                .dispatcher()
                .deliveries(delivery.campaign, delivery.index, 1)
        })
        .await??;
        let view = views
            .and_then(|(_, v)| v.into_iter().next())
            .filter(|v| v.index == delivery.index)
            .ok_or_else(not_found)?;
        Ok((StatusCode::OK, communication(delivery.campaign, view), None))
    }
    .await
    .into()
}

/// `GET /fhir/r4/metadata`
#[utoipa::path(get, path = "/fhir/r4/metadata", tag = "fhir", security(("token" = [])),
    responses((status = 200, description = "The CapabilityStatement", content_type = "application/fhir+json")))]
pub async fn capability_statement() -> Response {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date()
        .to_string();
    fhir_json(
        StatusCode::OK,
        &json!({
            "resourceType": "CapabilityStatement",
            "status": "active",
            "date": today,
            "kind": "instance",
            "software": {"name": "mHero broker", "version": env!("CARGO_PKG_VERSION")},
            "fhirVersion": "4.0.1",
            "format": ["json"],
            "rest": [{
                "mode": "server",
                "security": {"service": [{"text": "Bearer token (Authorization: Bearer …)"}]},
                "resource": [
                    {"type": "CommunicationRequest",
                     "interaction": [{"code": "create"}, {"code": "read"}],
                     "documentation": "A message to health workers (IHE mACM Mobile Report Alert)"},
                    {"type": "Communication",
                     "interaction": [{"code": "read"}, {"code": "search-type"}],
                     "searchParam": [
                         {"name": "based-on", "type": "reference", "documentation": "The CommunicationRequest (required)"},
                         {"name": "_count", "type": "number", "documentation": "Page size (default 100, at most 1000)"},
                         {"name": "_offset", "type": "number", "documentation": "First delivery of the page"},
                     ],
                     "documentation": "One per delivery: its status, sent and received times"},
                    {"type": "DiagnosticReport",
                     "interaction": [{"code": "create"}],
                     "documentation": "A lab result, sent to the clinician who ordered it"},
                    {"type": "QuestionnaireResponse",
                     "interaction": [{"code": "search-type"}],
                     "searchParam": [
                         {"name": "questionnaire", "type": "reference", "documentation": "The survey's Questionnaire (required)"},
                         {"name": "_count", "type": "number", "documentation": "Page size (default 100, at most 1000)"},
                     ],
                     "documentation": "One per worker asked a flash survey"},
                    {"type": "Observation",
                     "interaction": [{"code": "search-type"}],
                     "searchParam": [
                         {"name": "code", "type": "token", "documentation": "The item code (AMOX)"},
                         {"name": "category", "type": "token", "documentation": "The report kind (stock, case)"},
                         {"name": "subject", "type": "reference", "documentation": "The facility (Location/…)"},
                         {"name": "_count", "type": "number", "documentation": "Page size (default 100, at most 1000)"},
                     ],
                     "documentation": "One per item of each structured report (stock counts, cases) from health workers"},
                ],
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
            }]
        }),
    )
}
