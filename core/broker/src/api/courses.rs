//! Training courses over HTTP: create one (lessons and quizzes on a
//! schedule, workers enrolled by a selector), follow it, read each
//! worker's progress.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::error::{ApiError, ApiJson};
use crate::workflows::courses::{CourseRecord, CourseSpec, Progress, ProgressState, Step};

/// A course, with how far its workers are.
#[derive(Debug, Serialize, ToSchema)]
pub struct CourseView {
    /// `c3`.
    pub id: String,
    pub name: String,
    pub selector: String,
    pub channels: Vec<String>,
    pub created_ms: u64,
    pub start_ms: u64,
    pub enrolled: u32,
    /// Workers who finished every step.
    pub completed: u64,
    /// Workers who opted out (or left the directory) on the way.
    pub stopped: u64,
    pub steps: Vec<StepView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StepView {
    /// `lesson` or `quiz`.
    pub kind: &'static str,
    pub delay_s: u64,
    /// A quiz's survey (`s12`): its answers per question.
    pub survey: Option<String>,
    /// Workers who got past this step.
    pub done: u64,
    /// A quiz: the share of its keyed questions answered right, over the
    /// workers who took it.
    pub mean_score: Option<f64>,
}

/// One worker's progress.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProgressView {
    pub contact: u32,
    /// The worker's source resource (`Practitioner/123`).
    pub source: Option<String>,
    /// The step waited for or in (1-based; past the last once completed).
    pub step: u32,
    pub state: ProgressState,
    pub lessons_sent: u32,
    pub quizzes: Vec<QuizScore>,
    pub enrolled_ms: u64,
    pub updated_ms: u64,
    pub completed_ms: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct QuizScore {
    /// 1-based.
    pub step: u32,
    pub right: u32,
    pub questions: u32,
}

/// A course, created.
#[derive(Debug, Serialize, ToSchema)]
pub struct CourseCreated {
    pub id: String,
    pub name: String,
    pub enrolled: u32,
    pub start_ms: u64,
}

fn course_id(id: &str) -> Result<u64, ApiError> {
    id.strip_prefix('c')
        .unwrap_or(id)
        .parse()
        .map_err(|_| ApiError::not_found(format!("no course {id:?}")))
}

fn found(api: &Api, id: &str) -> Result<Arc<CourseRecord>, ApiError> {
    api.broker
        .courses()
        .get(course_id(id)?)
        .ok_or_else(|| ApiError::not_found(format!("no course {id:?}")))
}

/// Create a training course: lessons and quizzes on a schedule, to every
/// worker the selector names.
#[utoipa::path(post, path = "/v1/courses", tag = "courses", security(("token" = [])),
    request_body = CourseSpec,
    responses(
        (status = 201, description = "Created: the workers are enrolled; the first step goes out when due", body = CourseCreated),
        (status = 400, description = "Invalid: the message names the element", body = super::error::ErrorBody),
    ))]
pub async fn create_course(
    State(api): State<Arc<Api>>,
    ApiJson(spec): ApiJson<CourseSpec>,
) -> Result<Response, ApiError> {
    let channels = api.channels_for(&spec.channels)?;
    let now = api.broker.dispatcher().now_ms();
    let courses = Arc::clone(api.broker.courses());
    let record = tokio::task::spawn_blocking(move || courses.create(spec, channels, now)).await??;
    let id = format!("c{}", record.id);
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/v1/courses/{id}"))],
        Json(CourseCreated {
            id,
            name: record.name.clone(),
            enrolled: record.enrolled,
            start_ms: record.start_ms,
        }),
    )
        .into_response())
}

/// Courses, newest first.
#[utoipa::path(get, path = "/v1/courses", tag = "courses", security(("token" = [])),
    responses((status = 200, body = Vec<CourseView>)))]
pub async fn list_courses(State(api): State<Arc<Api>>) -> Result<Json<Vec<CourseView>>, ApiError> {
    let reader = Arc::clone(&api);
    let views = tokio::task::spawn_blocking(move || {
        reader
            .broker
            .courses()
            .list()
            .into_iter()
            .take(100)
            .map(|c| view(&reader, &c))
            .collect::<crate::Result<Vec<_>>>()
    })
    .await??;
    Ok(Json(views))
}

/// A course and how far its workers are.
#[utoipa::path(get, path = "/v1/courses/{id}", tag = "courses", security(("token" = [])),
    params(("id" = String, Path, description = "`c3`")),
    responses((status = 200, body = CourseView), (status = 404, body = super::error::ErrorBody)))]
pub async fn get_course(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
) -> Result<Json<CourseView>, ApiError> {
    let course = found(&api, &id)?;
    let reader = Arc::clone(&api);
    Ok(Json(
        tokio::task::spawn_blocking(move || view(&reader, &course)).await??,
    ))
}

/// A course and its tally.
fn view(api: &Api, c: &CourseRecord) -> crate::Result<CourseView> {
    let tally = api.broker.courses().tally(c.id)?;
    let steps = c
        .steps
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let (kind, delay_ms, survey) = match s {
                Step::Lesson { delay_ms, .. } => ("lesson", *delay_ms, None),
                Step::Quiz {
                    survey, delay_ms, ..
                } => ("quiz", *delay_ms, Some(format!("s{survey}"))),
            };
            StepView {
                kind,
                delay_s: delay_ms / 1000,
                survey,
                done: tally.done.get(i).copied().unwrap_or(0),
                mean_score: tally.mean_score(i),
            }
        })
        .collect();
    Ok(CourseView {
        id: format!("c{}", c.id),
        name: c.name.clone(),
        selector: c.selector.clone(),
        channels: c.channels.clone(),
        created_ms: c.created_ms,
        start_ms: c.start_ms,
        enrolled: c.enrolled,
        completed: tally.completed,
        stopped: tally.stopped,
        steps,
    })
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ProgressQuery {
    /// The last contact number of the page before.
    pub after: Option<u32>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// Each enrolled worker's progress, in contact order.
#[utoipa::path(get, path = "/v1/courses/{id}/progress", tag = "courses", security(("token" = [])),
    params(("id" = String, Path, description = "`c3`"), ProgressQuery),
    responses((status = 200, body = Vec<ProgressView>), (status = 404, body = super::error::ErrorBody)))]
pub async fn course_progress(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    query: Result<Query<ProgressQuery>, QueryRejection>,
) -> Result<Json<Vec<ProgressView>>, ApiError> {
    let Query(q) = query.map_err(|r| super::error::query_rejection(&r))?;
    let course = found(&api, &id)?;
    let reader = Arc::clone(&api);
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let views = tokio::task::spawn_blocking(move || -> crate::Result<Vec<ProgressView>> {
        reader
            .broker
            .courses()
            .progress(course.id, q.after, limit)?
            .into_iter()
            .map(|p: Progress| {
                let source = reader
                    .broker
                    .directory()
                    .contact(p.contact)?
                    .and_then(|c| c.parts.first().map(|x| x.resource.clone()));
                Ok(ProgressView {
                    contact: p.contact,
                    source,
                    step: p.step + 1 + u32::from(p.state == ProgressState::Completed),
                    state: p.state,
                    lessons_sent: p.lessons_sent,
                    quizzes: p
                        .scores
                        .iter()
                        .map(|(step, right, questions)| QuizScore {
                            step: step + 1,
                            right: *right,
                            questions: *questions,
                        })
                        .collect(),
                    enrolled_ms: p.enrolled_ms,
                    updated_ms: p.updated_ms,
                    completed_ms: p.completed_ms,
                })
            })
            .collect()
    })
    .await??;
    Ok(Json(views))
}
