//! Flash surveys over HTTP: start one from a FHIR Questionnaire, read its
//! live results, export every worker's answers as CSV or as FHIR
//! `QuestionnaireResponse`s.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::error::{ApiError, ApiJson};
use super::fhir::{Fhir, base_url, page_url, search_entry, searchset};
use crate::workflows::questionnaire::{Answer, Kind};
use crate::workflows::survey::{Session, SessionState, SurveyRecord, Unanswered};
use crate::workflows::{SurveySpec, send};

/// A survey, started.
#[derive(Debug, Serialize, ToSchema)]
pub struct SurveyCreated {
    /// `s12`.
    pub id: String,
    pub title: String,
    /// Workers asked (selected, with an address).
    pub sessions: u32,
    pub deadline_ms: u64,
}

/// A survey and its live results.
#[derive(Debug, Serialize, ToSchema)]
pub struct SurveyView {
    pub id: String,
    pub title: String,
    pub selector: String,
    pub channels: Vec<String>,
    pub created_ms: u64,
    pub deadline_ms: u64,
    /// `open` until the deadline, then `closed`.
    pub state: &'static str,
    pub sessions: u32,
    pub completed: u64,
    /// Workers who opted out during it.
    pub stopped: u64,
    /// When the last answer was counted (ms).
    pub last_answer_ms: u64,
    pub questions: Vec<QuestionResult>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuestionResult {
    pub link_id: String,
    pub text: String,
    /// `boolean`, `choice`, `integer`, `decimal`, `string`, `date`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Workers asked it (branching skips it for some).
    pub asked: u64,
    pub answered: u64,
    /// Answers it could not read (each re-asked once).
    pub not_understood: u64,
    pub timed_out: u64,
    /// Per option (choice; boolean: `yes`, `no`).
    pub options: Vec<OptionCount>,
    /// integer and decimal answers.
    pub mean: Option<f64>,
    pub min: Option<f64>,
    pub max: Option<f64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OptionCount {
    pub code: String,
    pub display: String,
    pub count: u64,
}

fn survey_id(id: &str) -> Result<u64, ApiError> {
    id.strip_prefix('s')
        .unwrap_or(id)
        .parse()
        .map_err(|_| ApiError::not_found(format!("no survey {id:?}")))
}

fn found(api: &Api, id: &str) -> Result<Arc<SurveyRecord>, ApiError> {
    let n = survey_id(id)?;
    api.broker
        .surveys()
        .get(n)
        .ok_or_else(|| ApiError::not_found(format!("no survey {id:?}")))
}

/// Start a flash survey.
#[utoipa::path(post, path = "/v1/surveys", tag = "surveys", security(("token" = [])),
    request_body = SurveySpec,
    responses(
        (status = 201, description = "Started: every selected worker is asked the first question", body = SurveyCreated),
        (status = 400, description = "Invalid: the message names the element", body = super::error::ErrorBody),
    ))]
pub async fn create_survey(
    State(api): State<Arc<Api>>,
    ApiJson(spec): ApiJson<SurveySpec>,
) -> Result<Response, ApiError> {
    let channels = api.channels_for(&spec.channels)?;
    let now = api.broker.dispatcher().now_ms();
    let surveys = Arc::clone(api.broker.surveys());
    let (record, out) =
        tokio::task::spawn_blocking(move || surveys.create(spec, channels, now)).await??;
    first_questions(&api, out, &format!("survey s{}", record.id)).await?;
    let id = format!("s{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/surveys/{id}"))],
        Json(SurveyCreated {
            id,
            title: record.title.clone(),
            sessions: record.sessions,
            deadline_ms: record.deadline_ms,
        }),
    )
        .into_response())
}

/// Sends the first questions of what `what` started (a survey, a
/// validation); an error says it started but they did not leave.
pub(crate) async fn first_questions(
    api: &Api,
    out: Vec<crate::workflows::Outgoing>,
    what: &str,
) -> Result<(), ApiError> {
    let problems = send(
        api.broker.surveys(),
        &api.broker.dispatcher().submitter(),
        out,
    )
    .await;
    match problems.first() {
        Some(p) => Err(crate::Error::Internal(format!(
            "{what} started but its first question was not sent: {p}"
        ))
        .into()),
        None => Ok(()),
    }
}

/// Surveys, newest first, with their results.
#[utoipa::path(get, path = "/v1/surveys", tag = "surveys", security(("token" = [])),
    responses((status = 200, body = Vec<SurveyView>)))]
pub async fn list_surveys(State(api): State<Arc<Api>>) -> Result<Json<Vec<SurveyView>>, ApiError> {
    let reader = Arc::clone(&api);
    let views = tokio::task::spawn_blocking(move || {
        let now = reader.broker.dispatcher().now_ms();
        reader
            .broker
            .surveys()
            .list()
            .into_iter()
            .take(100)
            .map(|s| view(&reader, &s, now))
            .collect::<crate::Result<Vec<_>>>()
    })
    .await??;
    Ok(Json(views))
}

/// A survey's live results.
#[utoipa::path(get, path = "/v1/surveys/{id}", tag = "surveys", security(("token" = [])),
    params(("id" = String, Path, description = "`s12`")),
    responses((status = 200, body = SurveyView), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_survey(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<SurveyView>, ApiError> {
    let survey = found(&api, &id)?;
    let reader = Arc::clone(&api);
    let v = tokio::task::spawn_blocking(move || {
        view(&reader, &survey, reader.broker.dispatcher().now_ms())
    })
    .await??;
    Ok(Json(v))
}

fn view(api: &Api, s: &SurveyRecord, now: u64) -> crate::Result<SurveyView> {
    let a = api.broker.surveys().aggregate(s.id)?.unwrap_or_default();
    let questions = s
        .parsed
        .questions
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let t = a.questions.get(i).cloned().unwrap_or_default();
            let options = match q.kind {
                Kind::Boolean => ["yes", "no"]
                    .iter()
                    .enumerate()
                    .map(|(k, c)| OptionCount {
                        code: c.to_string(),
                        display: c.to_string(),
                        count: t.counts.get(k).copied().unwrap_or(0),
                    })
                    .collect(),
                Kind::Choice => q
                    .options
                    .iter()
                    .enumerate()
                    .map(|(k, o)| OptionCount {
                        code: o.code.clone(),
                        display: o.display.default.clone(),
                        count: t.counts.get(k).copied().unwrap_or(0),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let numeric = matches!(q.kind, Kind::Integer | Kind::Decimal) && t.answered > 0;
            QuestionResult {
                link_id: q.link_id.clone(),
                text: q.text.default.clone(),
                kind: q.kind.fhir(),
                asked: t.asked,
                answered: t.answered,
                not_understood: t.not_understood,
                timed_out: t.timed_out,
                options,
                mean: numeric.then(|| t.sum / t.answered as f64),
                min: t.min,
                max: t.max,
            }
        })
        .collect();
    Ok(SurveyView {
        id: format!("s{}", s.id),
        title: s.title.clone(),
        selector: s.selector.clone(),
        channels: s.channels.clone(),
        created_ms: s.created_ms,
        deadline_ms: s.deadline_ms,
        state: if now > s.deadline_ms {
            "closed"
        } else {
            "open"
        },
        sessions: s.sessions,
        completed: a.completed,
        stopped: a.stopped,
        last_answer_ms: a.last_answer_ms,
        questions,
    })
}

/// Every worker's answers, one row per worker asked: `contact`, `source`
/// (the directory's source resource), `status`, then one column per
/// question (`linkId`): the answer, empty when not answered.
#[utoipa::path(get, path = "/v1/surveys/{id}/responses.csv", tag = "surveys", security(("token" = [])),
    params(("id" = String, Path, description = "`s12`")),
    responses((status = 200, description = "text/csv", content_type = "text/csv"), (status = 404, body = super::error::ErrorBody)))]
pub async fn responses_csv(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let survey = found(&api, &id)?;
    let reader = Arc::clone(&api);
    let csv = tokio::task::spawn_blocking(move || -> crate::Result<String> {
        let now = reader.broker.dispatcher().now_ms();
        let mut out = String::from("contact,source,status");
        for q in &survey.parsed.questions {
            out.push(',');
            out.push_str(&field(&q.link_id));
        }
        out.push('\n');
        let mut after = None;
        loop {
            let page = reader.broker.surveys().sessions(survey.id, after, 1000)?;
            let Some(last) = page.last().map(|s| s.contact) else {
                break;
            };
            for s in &page {
                let source = reader
                    .broker
                    .directory()
                    .contact(s.contact)?
                    .and_then(|c| c.parts.first().map(|p| p.resource.clone()))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "{},{},{}",
                    s.contact,
                    field(&source),
                    status(&survey, s, now)
                ));
                for (i, q) in survey.parsed.questions.iter().enumerate() {
                    out.push(',');
                    if let Some((_, a)) = s.answers.iter().rev().find(|(k, _)| *k as usize == i) {
                        out.push_str(&field(&crate::workflows::survey::show(q, a)));
                    }
                }
                out.push('\n');
            }
            after = Some(last);
        }
        Ok(out)
    })
    .await??;
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"survey-{id}.csv\""),
            ),
        ],
        csv,
    )
        .into_response())
}

/// A CSV field, quoted when it must be; a leading `=`, `+`, `-` or `@` is
/// prefixed with `'` so a spreadsheet does not run it as a formula.
fn field(v: &str) -> String {
    let v = if v.starts_with(['=', '+', '-', '@']) && v.parse::<f64>().is_err() {
        format!("'{v}")
    } else {
        v.to_string()
    };
    if v.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", v.replace('"', "\"\""))
    } else {
        v
    }
}

/// A session's status: `in-progress`, `completed`, `stopped` (opted
/// out), or `expired` (the deadline passed first).
fn status(survey: &SurveyRecord, s: &Session, now: u64) -> &'static str {
    match s.state {
        SessionState::Completed => "completed",
        SessionState::Stopped => "stopped",
        SessionState::Active if now > survey.deadline_ms => "expired",
        SessionState::Active => "in-progress",
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ResponseQuery {
    /// `Questionnaire/s12`, `s12`, or the Questionnaire's `url` or `id`.
    pub questionnaire: Option<String>,
    #[serde(rename = "_count")]
    pub count: Option<usize>,
    /// The last contact number of the page before.
    #[serde(rename = "_after")]
    pub after: Option<u32>,
}

/// `GET /fhir/r4/QuestionnaireResponse?questionnaire=…`: each worker's
/// answers as a QuestionnaireResponse, in a searchset Bundle.
#[utoipa::path(get, path = "/fhir/r4/QuestionnaireResponse", tag = "fhir", security(("token" = [])),
    params(ResponseQuery),
    responses(
        (status = 200, description = "A searchset Bundle of QuestionnaireResponses", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn search_responses(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<ResponseQuery>, QueryRejection>,
) -> Fhir {
    async {
        let Query(query) = query.map_err(|r| super::error::query_rejection(&r))?;
        let wanted = query.questionnaire.ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                "questionnaire= is required: responses are searched by the survey they answer",
            )
        })?;
        let raw = wanted.strip_prefix("Questionnaire/").unwrap_or(&wanted);
        let survey = api
            .broker
            .surveys()
            .list()
            .into_iter()
            .find(|s| {
                format!("s{}", s.id) == raw
                    || s.parsed.url.as_deref() == Some(raw)
                    || s.parsed.id.as_deref() == Some(raw)
            })
            .ok_or_else(|| {
                ApiError::not_found(format!("no survey answers Questionnaire {wanted:?}"))
            })?;
        let count = query.count.unwrap_or(100).clamp(1, 1000);
        let reader = Arc::clone(&api);
        let s = Arc::clone(&survey);
        let (sessions, sources) = tokio::task::spawn_blocking(move || -> crate::Result<_> {
            let sessions = reader.broker.surveys().sessions(s.id, query.after, count)?;
            let sources = sessions
                .iter()
                .map(|x| {
                    Ok(reader
                        .broker
                        .directory()
                        .contact(x.contact)?
                        .and_then(|c| c.parts.first().map(|p| p.resource.clone())))
                })
                .collect::<crate::Result<Vec<_>>>()?;
            Ok((sessions, sources))
        })
        .await??;
        let base = base_url(&headers);
        let now = api.broker.dispatcher().now_ms();
        let page = |after: Option<u32>| {
            let mut pairs = vec![
                ("questionnaire", wanted.clone()),
                ("_count", count.to_string()),
            ];
            pairs.extend(after.map(|a| ("_after", a.to_string())));
            page_url(&base, "QuestionnaireResponse", &pairs)
        };
        let next = sessions
            .last()
            .filter(|_| sessions.len() == count)
            .map(|last| page(Some(last.contact)));
        let entry: Vec<Value> = sessions
            .iter()
            .zip(sources)
            .map(|(x, source)| {
                let id = format!("s{}-{}", survey.id, x.contact);
                search_entry(
                    format!("{base}/QuestionnaireResponse/{id}"),
                    response(&survey, x, source, now, &id),
                    "match",
                )
            })
            .collect();
        Ok((
            StatusCode::OK,
            searchset(page(query.after), next, entry),
            None,
        ))
    }
    .await
    .into()
}

/// One worker's answers as a FHIR R4 QuestionnaireResponse.
fn response(
    survey: &SurveyRecord,
    s: &Session,
    source: Option<String>,
    now: u64,
    id: &str,
) -> Value {
    let status = match status(survey, s, now) {
        "completed" => "completed",
        "in-progress" => "in-progress",
        _ => "stopped",
    };
    let items: Vec<Value> = s
        .answers
        .iter()
        .map(|(i, a)| {
            let q = &survey.parsed.questions[*i as usize];
            let value = match a {
                Answer::Boolean(b) => json!({"valueBoolean": b}),
                Answer::Choice(k) => {
                    let o = &q.options[*k as usize];
                    match o.value_type.as_str() {
                        "string" => json!({"valueString": o.code}),
                        "integer" => {
                            json!({"valueInteger": o.code.parse::<i64>().unwrap_or_default()})
                        }
                        _ => {
                            let mut coding = json!({"code": o.code, "display": o.display.default});
                            if let Some(system) = &o.system {
                                coding["system"] = json!(system);
                            }
                            json!({ "valueCoding": coding })
                        }
                    }
                }
                Answer::Integer(n) => json!({"valueInteger": n}),
                Answer::Decimal(n) => json!({"valueDecimal": n}),
                Answer::String(t) => json!({"valueString": t}),
                Answer::Date(d) => json!({"valueDate": d}),
            };
            json!({"linkId": q.link_id, "text": q.text.default, "answer": [value]})
        })
        .collect();
    let mut r = json!({
        "resourceType": "QuestionnaireResponse",
        "id": id,
        "questionnaire": survey.parsed.url.clone().unwrap_or_else(|| format!("Questionnaire/s{}", survey.id)),
        "status": status,
        "authored": jiff::Timestamp::from_millisecond(s.updated_ms as i64).map(|t| t.to_string()).unwrap_or_default(),
        "item": items,
    });
    if let Some(source) = source {
        r["subject"] = json!({"reference": source});
        r["author"] = json!({"reference": source});
    }
    let unanswered: Vec<Value> = s
        .unanswered
        .iter()
        .map(|(i, why)| {
            json!({"url": "https://mhero.org/fhir/StructureDefinition/unanswered",
                   "extension": [
                       {"url": "linkId", "valueString": survey.parsed.questions[*i as usize].link_id},
                       {"url": "reason", "valueCode": match why { Unanswered::TimedOut => "timed-out", Unanswered::NotUnderstood => "not-understood" }}
                   ]})
        })
        .collect();
    if !unanswered.is_empty() {
        r["extension"] = json!(unanswered);
    }
    r
}
