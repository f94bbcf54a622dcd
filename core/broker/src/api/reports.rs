//! Reports and inventory over HTTP: the roll-up by the location hierarchy
//! (`GET /v1/inventory`) and every report as FHIR Observations for a
//! ministry's HMIS (`GET /fhir/r4/Observation`).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use super::Api;
use super::error::ApiError;
use super::fhir::{Fhir, base_url, page_url, search_entry, searchset};
use crate::workflows::reports::{Report, Row, Tally};

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct InventoryQuery {
    /// A report kind (default `stock`).
    pub kind: Option<String>,
    /// Only places inside this one (`Location/C-bong`), itself included.
    pub location: Option<String>,
    /// Only places of this kind (`district`, `facility`…).
    pub level: Option<String>,
    /// Only this item code (`AMOX`).
    pub item: Option<String>,
}

/// The roll-up of one report kind.
#[derive(Debug, Serialize, ToSchema)]
pub struct Inventory {
    pub kind: String,
    /// `latest` (each report replaces a facility's figure) or `sum`.
    pub tally: Tally,
    /// A row per place and item: places with stock-outs first.
    pub rows: Vec<Row>,
}

/// The latest stock (or cases) per facility and item, rolled up by the
/// location hierarchy.
#[utoipa::path(get, path = "/v1/inventory", tag = "reports", security(("token" = [])),
    params(InventoryQuery),
    responses((status = 200, body = Inventory), (status = 400, body = super::error::ErrorBody)))]
pub async fn inventory(
    State(api): State<Arc<Api>>,
    query: Result<Query<InventoryQuery>, QueryRejection>,
) -> Result<Json<Inventory>, ApiError> {
    let Query(q) = query.map_err(|r| super::error::query_rejection(&r))?;
    let reports = Arc::clone(api.broker.reports());
    let kind = q.kind.unwrap_or_else(|| "stock".into());
    let tally = reports.tally(&kind).ok_or_else(|| {
        let kinds: Vec<&str> = reports.config().kinds.keys().map(String::as_str).collect();
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            format!("kind={kind:?}: the report kinds are {}", kinds.join(", ")),
        )
    })?;
    let directory = Arc::clone(api.broker.directory());
    let rows = {
        let kind = kind.clone();
        tokio::task::spawn_blocking(move || {
            reports.rollup(&directory, &kind, q.location.as_deref(), q.level.as_deref())
        })
        .await
        .map_err(|e| crate::Error::Internal(e.to_string()))?
    };
    let rows = match q.item {
        Some(item) => rows
            .into_iter()
            .filter(|r| r.item.eq_ignore_ascii_case(&item))
            .collect(),
        None => rows,
    };
    Ok(Json(Inventory { kind, tally, rows }))
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct ObservationQuery {
    /// An item code (`AMOX`), to keep only its Observations.
    pub code: Option<String>,
    /// A report kind (`stock`, `case`).
    pub category: Option<String>,
    /// `Location/…`: only reports from this facility.
    pub subject: Option<String>,
    #[serde(rename = "_count")]
    pub count: Option<usize>,
    /// The last report of the page before (from the `next` link).
    #[serde(rename = "_after")]
    pub after: Option<u64>,
}

/// Every report item as a FHIR R4 Observation (a searchset Bundle, in
/// arrival order, with a `next` link): what a ministry's HMIS imports.
#[utoipa::path(get, path = "/fhir/r4/Observation", tag = "fhir", security(("token" = [])),
    params(ObservationQuery),
    responses(
        (status = 200, description = "A searchset Bundle of Observations", content_type = "application/fhir+json"),
        (status = 400, description = "An OperationOutcome", content_type = "application/fhir+json"),
    ))]
pub async fn search_observations(
    State(api): State<Arc<Api>>,
    headers: HeaderMap,
    query: Result<Query<ObservationQuery>, QueryRejection>,
) -> Fhir {
    async {
        let Query(q) = query.map_err(|r| super::error::query_rejection(&r))?;
        let count = q.count.unwrap_or(100).clamp(1, 1000);
        let reports = Arc::clone(api.broker.reports());
        let (filter_code, filter_category, filter_subject) =
            (q.code.clone(), q.category.clone(), q.subject.clone());
        // Reports are read in pages until `count` Observations match (or
        // the reports end): the filters keep what a page holds.
        let (observations, last) = tokio::task::spawn_blocking(move || -> crate::Result<_> {
            let mut out: Vec<(Report, String, u64)> = Vec::new();
            let mut after = q.after;
            let mut last = None;
            'pages: loop {
                let page = reports.reports(after, 1000)?;
                let Some(end) = page.last().map(|r| r.seq) else {
                    break;
                };
                for r in page {
                    let seq = r.seq;
                    if filter_category.as_ref().is_some_and(|c| *c != r.kind)
                        || filter_subject.as_ref().is_some_and(|s| *s != r.facility)
                    {
                        continue;
                    }
                    for (item, n) in &r.items {
                        if filter_code
                            .as_ref()
                            .is_some_and(|c| !c.eq_ignore_ascii_case(item))
                        {
                            continue;
                        }
                        out.push((r.clone(), item.clone(), *n));
                    }
                    if out.len() >= count {
                        last = Some(seq);
                        break 'pages;
                    }
                }
                after = Some(end);
            }
            Ok((out, last))
        })
        .await
        .map_err(|e| crate::Error::Internal(e.to_string()))??;
        let base = base_url(&headers);
        let page = |after: Option<u64>| {
            let mut pairs: Vec<(&str, String)> = [
                ("code", &q.code),
                ("category", &q.category),
                ("subject", &q.subject),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k, v.clone()?)))
            .collect();
            pairs.push(("_count", count.to_string()));
            pairs.extend(after.map(|a| ("_after", a.to_string())));
            page_url(&base, "Observation", &pairs)
        };
        let next = last.map(|last| page(Some(last)));
        let tallies = &api.broker.reports().config().kinds;
        let entry: Vec<Value> = observations
            .iter()
            .map(|(r, item, n)| {
                let o = observation(r, item, *n, tallies.get(&r.kind).copied());
                let url = format!(
                    "{base}/Observation/{}",
                    o["id"].as_str().unwrap_or_default()
                );
                search_entry(url, o, "match")
            })
            .collect();
        Ok((StatusCode::OK, searchset(page(q.after), next, entry), None))
    }
    .await
    .into()
}

/// Code systems of the Observations: the report kind and the item code as
/// the catalogue names them.
pub const KIND_SYSTEM: &str = "https://mhero.org/fhir/CodeSystem/report-kind";
pub const ITEM_SYSTEM: &str = "https://mhero.org/fhir/CodeSystem/report-item";

/// One item of a report as a FHIR R4 Observation: the facility is its
/// subject, the worker its performer; a stock count is a quantity, cases
/// an integer.
pub fn observation(r: &Report, item: &str, n: u64, tally: Option<Tally>) -> Value {
    let when = jiff::Timestamp::from_millisecond(r.at_ms as i64)
        .map(|t| t.to_string())
        .unwrap_or_default();
    let mut o = json!({
        "resourceType": "Observation",
        "id": format!("r{}-{}", r.seq, item.to_ascii_lowercase()),
        "status": "final",
        "category": [{"coding": [{"system": KIND_SYSTEM, "code": r.kind}]}],
        "code": {"coding": [{"system": ITEM_SYSTEM, "code": item}], "text": item},
        "subject": {"reference": r.facility},
        "effectiveDateTime": when,
        "issued": when,
    });
    match tally {
        Some(Tally::Sum) => o["valueInteger"] = json!(n),
        _ => {
            o["valueQuantity"] = json!({"value": n, "unit": "units", "system": "http://unitsofmeasure.org", "code": "{unit}"})
        }
    }
    if let Some(source) = &r.source {
        o["performer"] = json!([{"reference": source}]);
    }
    o
}
