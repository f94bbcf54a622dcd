//! The directory over REST: contacts (listed by selector, looked up one
//! at a time, opted out or back in), groups and the directory's figures.
//! Contacts come in through the FHIR facade's Bundle import or a sync
//! source; here they are read and their consent is managed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::error::{ApiError, ApiQuery, ErrorBody};
use crate::directory::{Contact, OptOut, Summary};

/// A contact as the API shows it: what its sources say, merged.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactView {
    /// The directory's number for it (`#42` finds it).
    pub number: u32,
    pub name: String,
    /// E.164.
    pub phone: Option<String>,
    /// Other addresses by kind (`whatsapp`, `telegram`…).
    pub addresses: std::collections::BTreeMap<String, String>,
    pub language: Option<String>,
    pub roles: Vec<String>,
    /// `Location/…` where it works.
    pub facilities: Vec<String>,
    pub active: bool,
    /// Set when it asked not to be messaged: never selected.
    pub opted_out: Option<OptOutView>,
    /// `source:Resource/id` of each source that names it.
    pub sources: Vec<String>,
    /// What a source gave that could not be used.
    pub problems: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct OptOutView {
    pub at_ms: u64,
    /// How: `STOP by sms`, `operator`.
    pub via: String,
}

impl From<&Contact> for ContactView {
    fn from(c: &Contact) -> Self {
        Self {
            number: c.number,
            name: c.name().to_string(),
            phone: c.phone().map(str::to_string),
            addresses: c
                .addresses()
                .into_iter()
                .filter(|(k, _)| *k != "tel")
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            language: c.language().map(str::to_string),
            roles: c.roles().into_iter().map(str::to_string).collect(),
            facilities: c.facilities().into_iter().map(str::to_string).collect(),
            active: c.active(),
            opted_out: c.opted_out.as_ref().map(|o| OptOutView {
                at_ms: o.at_ms,
                via: o.via.clone(),
            }),
            sources: c
                .parts
                .iter()
                .map(|p| format!("{}:{}", p.source, p.resource))
                .collect(),
            problems: c.parts.iter().flat_map(|p| p.problems.clone()).collect(),
        }
    }
}

/// One contact, with its groups and places.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactDetail {
    #[serde(flatten)]
    pub contact: ContactView,
    /// `(id, name)` of the groups it is in.
    pub groups: Vec<(String, String)>,
    /// `(id, name)` of the places enclosing its first facility, nearest
    /// first.
    pub places: Vec<(String, String)>,
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ContactsQuery {
    /// Which contacts (default `*`: every active contact not opted out).
    pub selector: Option<String>,
    /// List those after this contact number (the last of a page).
    pub after: Option<u32>,
    /// Most listed (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of contacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct ContactPage {
    /// Contacts the selector names.
    pub total: u64,
    pub contacts: Vec<ContactView>,
    /// Pass as `after` for the next page, while more remain.
    pub next_after: Option<u32>,
    /// Selector terms that matched nothing the directory knows.
    pub unknown_terms: Vec<String>,
}

/// Contacts a selector names, in directory order.
#[utoipa::path(get, path = "/v1/contacts", tag = "directory", security(("token" = [])),
    params(ContactsQuery),
    responses(
        (status = 200, body = ContactPage),
        (status = 400, description = "A malformed selector: the reason", body = ErrorBody),
    ))]
pub async fn list_contacts(
    State(api): State<Arc<Api>>,
    ApiQuery(query): ApiQuery<ContactsQuery>,
) -> Result<Json<ContactPage>, ApiError> {
    let selector = query.selector.unwrap_or_else(|| "*".into());
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let directory = Arc::clone(api.broker.directory());
    let page = tokio::task::spawn_blocking(move || -> crate::error::Result<ContactPage> {
        let (selected, unknown_terms) = directory.select(&selector)?;
        let start = query.after.map_or(0, |a| a.saturating_add(1));
        let mut contacts = Vec::with_capacity(limit);
        let mut more = false;
        for number in selected.range(start..) {
            if contacts.len() == limit {
                more = true;
                break;
            }
            if let Some(c) = directory.contact(number)? {
                contacts.push(ContactView::from(&c));
            }
        }
        Ok(ContactPage {
            total: selected.len(),
            next_after: if more {
                contacts.last().map(|c| c.number)
            } else {
                None
            },
            contacts,
            unknown_terms,
        })
    })
    .await??;
    Ok(Json(page))
}

fn find(api: &Api, query: &str) -> Result<Contact, ApiError> {
    api.broker
        .directory()
        .find(query)?
        .ok_or_else(|| ApiError::not_found(format!("no contact {query}")))
}

/// One contact: by number (`42`), phone number (`+231…`) or source
/// resource (`Practitioner/123`, `ihris:Practitioner/123`).
#[utoipa::path(get, path = "/v1/contacts/{query}", tag = "directory", security(("token" = [])),
    params(("query" = String, Path, description = "`42`, `+231770000101`, `Practitioner/123` or `ihris:Practitioner/123`")),
    responses(
        (status = 200, body = ContactDetail),
        (status = 404, body = ErrorBody),
    ))]
pub async fn get_contact(
    State(api): State<Arc<Api>>,
    Path(query): Path<String>,
) -> Result<Json<ContactDetail>, ApiError> {
    let detail = tokio::task::spawn_blocking(move || -> Result<ContactDetail, ApiError> {
        let c = find(&api, &query)?;
        let directory = api.broker.directory();
        let places = c
            .facilities()
            .first()
            .map(|f| directory.ancestry(f))
            .unwrap_or_default();
        Ok(ContactDetail {
            groups: directory.groups_of(c.number),
            places,
            contact: ContactView::from(&c),
        })
    })
    .await??;
    Ok(Json(detail))
}

/// Why a contact is opted out.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OptOutRequest {
    /// How the worker asked (default `operator`).
    pub via: Option<String>,
}

async fn set_opt_out(
    api: Arc<Api>,
    query: String,
    opt_out: Option<OptOut>,
) -> Result<Json<ContactView>, ApiError> {
    let view = tokio::task::spawn_blocking(move || -> Result<ContactView, ApiError> {
        let c = find(&api, &query)?;
        let directory = api.broker.directory();
        if !directory.set_opted_out(c.number, opt_out)? {
            return Err(ApiError::not_found(format!("no contact {query}")));
        }
        let c = directory
            .contact(c.number)?
            .ok_or_else(|| ApiError::not_found(format!("no contact {query}")))?;
        Ok(ContactView::from(&c))
    })
    .await??;
    Ok(Json(view))
}

/// Opt a contact out: no campaign selects it from now on (one already
/// frozen withholds it when its turn comes). Durable before the answer.
#[utoipa::path(post, path = "/v1/contacts/{query}/opt-out", tag = "directory", security(("token" = [])),
    params(("query" = String, Path, description = "As for GET /v1/contacts/{query}")),
    request_body(content = OptOutRequest, description = "Optional: how the worker asked"),
    responses(
        (status = 200, body = ContactView),
        (status = 404, body = ErrorBody),
    ))]
pub async fn opt_out(
    State(api): State<Arc<Api>>,
    Path(query): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<ContactView>, ApiError> {
    let request: OptOutRequest = if body.iter().all(u8::is_ascii_whitespace) {
        OptOutRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", e.to_string()))?
    };
    let opt_out = OptOut {
        at_ms: api.broker.dispatcher().now_ms(),
        via: request.via.unwrap_or_else(|| "operator".into()),
    };
    set_opt_out(api, query, Some(opt_out)).await
}

/// Opt a contact back in (the worker asked to be messaged again).
#[utoipa::path(post, path = "/v1/contacts/{query}/opt-in", tag = "directory", security(("token" = [])),
    params(("query" = String, Path, description = "As for GET /v1/contacts/{query}")),
    responses(
        (status = 200, body = ContactView),
        (status = 404, body = ErrorBody),
    ))]
pub async fn opt_in(
    State(api): State<Arc<Api>>,
    Path(query): Path<String>,
) -> Result<Json<ContactView>, ApiError> {
    set_opt_out(api, query, None).await
}

/// A group of contacts.
#[derive(Debug, Serialize, ToSchema)]
pub struct GroupView {
    /// `Group/…`, or what a mapper derives (a cadre).
    pub id: String,
    pub name: String,
    pub source: String,
    /// Members in the directory.
    pub members: u64,
    /// Members the source names that are not (yet) in the directory.
    pub unresolved: usize,
    /// Derived by a mapper (only gains members) rather than a FHIR Group.
    pub derived: bool,
}

/// The directory's groups (select one with `group:<id>` or
/// `group:"<name>"`).
#[utoipa::path(get, path = "/v1/groups", tag = "directory", security(("token" = [])),
    responses((status = 200, body = Vec<GroupView>)))]
pub async fn groups(State(api): State<Arc<Api>>) -> Json<Vec<GroupView>> {
    Json(
        api.broker
            .directory()
            .groups()
            .into_iter()
            .map(|(id, g, members)| GroupView {
                id,
                name: g.name,
                source: g.source,
                members,
                unresolved: g.unresolved.len(),
                derived: g.derived,
            })
            .collect(),
    )
}

/// How many contacts, places and groups the directory holds.
#[utoipa::path(get, path = "/v1/directory", tag = "directory", security(("token" = [])),
    responses((status = 200, body = Summary)))]
pub async fn summary(State(api): State<Arc<Api>>) -> Json<Summary> {
    Json(api.broker.directory().summary())
}
