//! CAP 1.2 alerts (OASIS Common Alerting Protocol), as national alerting
//! authorities publish them: `POST /v1/alerts/cap`.
//!
//! - Only `status` Actual reaches workers; Exercise, System, Test and
//!   Draft alerts are checked and answered, never sent.
//! - Each `info` block is the text in its `language` (the first is the
//!   default): its `headline`, then its `instruction` (or `description`).
//! - `urgency` Immediate or `severity` Extreme → the emergency lane;
//!   Expected or Severe → high; else normal.
//! - `area/geocode` values name directory locations (`Location/<value>`,
//!   each with everything inside it); an area with only a polygon or a
//!   circle cannot be matched to workers and is refused.
//! - `expires` (the earliest of the blocks) is the campaign's expiry.
//! - `msgType` Update stops what is still queued of the alerts its
//!   `references` name and sends the update; Cancel stops them and sends
//!   nothing.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use mhero_proto::{CampaignId, Lane};
use serde::Serialize;
use utoipa::ToSchema;

use super::Api;
use super::error::{ApiError, ErrorBody};
use crate::dispatch::{AudienceSpec, Body, CampaignSpec, Once};
use crate::store::{Cf, keys};

/// The CAP 1.2 namespace.
pub const CAP_NS: &str = "urn:oasis:names:tc:emergency:cap:1.2";

#[derive(Clone, Debug, PartialEq)]
pub struct Alert {
    pub identifier: String,
    pub sender: String,
    pub sent_ms: u64,
    pub status: String,
    pub msg_type: String,
    /// `(sender, identifier)` of the earlier alerts an Update or Cancel
    /// names.
    pub references: Vec<(String, String)>,
    pub infos: Vec<Info>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Info {
    pub language: String,
    pub event: String,
    pub urgency: String,
    pub severity: String,
    pub headline: Option<String>,
    pub description: Option<String>,
    pub instruction: Option<String>,
    pub expires_ms: Option<u64>,
    /// Geocode values of its areas.
    pub geocodes: Vec<String>,
    /// Areas without a geocode (only a polygon, a circle or a description).
    pub areas_without_geocode: Vec<String>,
}

const STATUS: &[&str] = &["Actual", "Exercise", "System", "Test", "Draft"];
const MSG_TYPE: &[&str] = &["Alert", "Update", "Cancel", "Ack", "Error"];
const SCOPE: &[&str] = &["Public", "Restricted", "Private"];
const CATEGORY: &[&str] = &[
    "Geo",
    "Met",
    "Safety",
    "Security",
    "Rescue",
    "Fire",
    "Health",
    "Env",
    "Transport",
    "Infra",
    "CBRNE",
    "Other",
];
const URGENCY: &[&str] = &["Immediate", "Expected", "Future", "Past", "Unknown"];
const SEVERITY: &[&str] = &["Extreme", "Severe", "Moderate", "Minor", "Unknown"];
const CERTAINTY: &[&str] = &["Observed", "Likely", "Possible", "Unlikely", "Unknown"];

type Node<'a, 'i> = roxmltree::Node<'a, 'i>;

fn children<'a, 'i>(node: Node<'a, 'i>, name: &'static str) -> impl Iterator<Item = Node<'a, 'i>> {
    node.children()
        .filter(move |c| c.is_element() && c.tag_name().name() == name)
}

fn text(node: Node<'_, '_>, name: &'static str) -> Option<String> {
    children(node, name)
        .next()
        .map(|n| n.text().unwrap_or("").trim().to_string())
}

fn required(node: Node<'_, '_>, path: &str, name: &'static str) -> Result<String, String> {
    match text(node, name) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("{path}.{name} is required")),
    }
}

fn one_of(path: &str, value: String, allowed: &[&str]) -> Result<String, String> {
    if allowed.contains(&value.as_str()) {
        Ok(value)
    } else {
        Err(format!(
            "{path}: {value:?} is not one of {}",
            allowed.join(", ")
        ))
    }
}

/// A CAP dateTime (`2026-11-28T10:00:00-00:00`): a time zone is required.
fn datetime(path: &str, value: &str) -> Result<u64, String> {
    let t: jiff::Timestamp = value
        .parse()
        .map_err(|e| format!("{path}: {value:?} is not a CAP dateTime ({e})"))?;
    u64::try_from(t.as_millisecond()).map_err(|_| format!("{path}: {value:?} is before 1970"))
}

/// Reads and checks a CAP 1.2 alert: what the schema requires, with the
/// reason when it is not met.
pub fn parse(xml: &str) -> Result<Alert, String> {
    let doc = roxmltree::Document::parse(xml).map_err(|e| format!("not well-formed XML: {e}"))?;
    let root = doc.root_element();
    if root.tag_name().name() != "alert" || root.tag_name().namespace() != Some(CAP_NS) {
        return Err(format!(
            "the root element must be <alert> in the namespace {CAP_NS} (CAP 1.2)"
        ));
    }
    let identifier = required(root, "alert", "identifier")?;
    let sender = required(root, "alert", "sender")?;
    let sent_ms = datetime("alert.sent", &required(root, "alert", "sent")?)?;
    let status = one_of("alert.status", required(root, "alert", "status")?, STATUS)?;
    let msg_type = one_of(
        "alert.msgType",
        required(root, "alert", "msgType")?,
        MSG_TYPE,
    )?;
    one_of("alert.scope", required(root, "alert", "scope")?, SCOPE)?;
    for (field, value) in [("identifier", &identifier), ("sender", &sender)] {
        if value.contains([' ', ',', '<', '&']) {
            return Err(format!(
                "alert.{field}: {value:?} may not contain spaces, commas, < or &"
            ));
        }
    }
    let mut references = Vec::new();
    if let Some(refs) = text(root, "references") {
        for triplet in refs.split_whitespace() {
            let parts: Vec<&str> = triplet.split(',').collect();
            if parts.len() != 3 {
                return Err(format!(
                    "alert.references: {triplet:?} is not sender,identifier,sent"
                ));
            }
            references.push((parts[0].to_string(), parts[1].to_string()));
        }
    }
    if matches!(msg_type.as_str(), "Update" | "Cancel") && references.is_empty() {
        return Err(format!(
            "alert.references: an {msg_type} must name the alerts it replaces"
        ));
    }
    let mut infos = Vec::new();
    for (i, info) in children(root, "info").enumerate() {
        let path = format!("alert.info[{i}]");
        if children(info, "category").next().is_none() {
            return Err(format!("{path}.category is required"));
        }
        for c in children(info, "category") {
            one_of(
                &format!("{path}.category"),
                c.text().unwrap_or("").trim().to_string(),
                CATEGORY,
            )?;
        }
        let event = required(info, &path, "event")?;
        let urgency = one_of(
            &format!("{path}.urgency"),
            required(info, &path, "urgency")?,
            URGENCY,
        )?;
        let severity = one_of(
            &format!("{path}.severity"),
            required(info, &path, "severity")?,
            SEVERITY,
        )?;
        one_of(
            &format!("{path}.certainty"),
            required(info, &path, "certainty")?,
            CERTAINTY,
        )?;
        let expires_ms = match text(info, "expires") {
            Some(e) => Some(datetime(&format!("{path}.expires"), &e)?),
            None => None,
        };
        let mut geocodes = Vec::new();
        let mut areas_without_geocode = Vec::new();
        for (j, area) in children(info, "area").enumerate() {
            let desc = required(area, &format!("{path}.area[{j}]"), "areaDesc")?;
            let mut found = false;
            for (k, g) in children(area, "geocode").enumerate() {
                let gpath = format!("{path}.area[{j}].geocode[{k}]");
                required(g, &gpath, "valueName")?;
                geocodes.push(required(g, &gpath, "value")?);
                found = true;
            }
            if !found {
                areas_without_geocode.push(desc);
            }
        }
        infos.push(Info {
            language: text(info, "language")
                .filter(|l| !l.is_empty())
                .unwrap_or_else(|| "en-US".into()),
            event,
            urgency,
            severity,
            headline: text(info, "headline").filter(|t| !t.is_empty()),
            description: text(info, "description").filter(|t| !t.is_empty()),
            instruction: text(info, "instruction").filter(|t| !t.is_empty()),
            expires_ms,
            geocodes,
            areas_without_geocode,
        });
    }
    Ok(Alert {
        identifier,
        sender,
        sent_ms,
        status,
        msg_type,
        references,
        infos,
    })
}

fn lane_of(infos: &[Info]) -> Lane {
    let mut lane = Lane::Normal;
    for i in infos {
        let l = if i.urgency == "Immediate" || i.severity == "Extreme" {
            Lane::Emergency
        } else if i.urgency == "Expected" || i.severity == "Severe" {
            Lane::High
        } else {
            Lane::Normal
        };
        lane = lane.min(l);
    }
    lane
}

fn text_of(info: &Info) -> Option<String> {
    let parts: Vec<&str> = [
        info.headline.as_deref(),
        info.instruction.as_deref().or(info.description.as_deref()),
    ]
    .into_iter()
    .flatten()
    .collect();
    (!parts.is_empty()).then(|| parts.join(" — "))
}

/// The campaign an Actual Alert or Update becomes.
pub fn campaign_of(alert: &Alert, channels: Vec<String>) -> Result<CampaignSpec, String> {
    let Some(first) = alert.infos.first() else {
        return Err("alert.info: an alert to send needs at least one info block".into());
    };
    let default = text_of(first)
        .ok_or("alert.info[0]: a headline, instruction or description is required to send")?;
    let mut variants = std::collections::BTreeMap::new();
    for info in &alert.infos[1..] {
        if let Some(t) = text_of(info) {
            variants.insert(info.language.clone(), t);
        }
    }
    let unmatched: Vec<&str> = alert
        .infos
        .iter()
        .flat_map(|i| i.areas_without_geocode.iter().map(String::as_str))
        .collect();
    if !unmatched.is_empty() {
        return Err(format!(
            "alert.info.area: {} has no geocode; workers are found by the directory's locations (a geocode value names Location/<value>), not by polygons or circles",
            unmatched.join(", ")
        ));
    }
    let mut places: Vec<String> = alert
        .infos
        .iter()
        .flat_map(|i| i.geocodes.iter())
        .map(|g| format!("location:\"Location/{}\"", g.replace(['"', '\\'], "")))
        .collect();
    places.sort();
    places.dedup();
    if places.is_empty() {
        return Err(
            "alert.info.area: a geocode naming a directory location is required to send".into(),
        );
    }
    let mut name = format!("CAP {}: {}", first.event, alert.identifier);
    if name.chars().count() > crate::dispatch::MAX_NAME_CHARS {
        name = name.chars().take(crate::dispatch::MAX_NAME_CHARS).collect();
    }
    Ok(CampaignSpec {
        name,
        lane: lane_of(&alert.infos),
        // CAP `resource`s (maps, images) are not sent: an alert must reach
        // SMS-only workers too.
        body: Body {
            default,
            variants,
            attachments: Vec::new(),
        },
        channels,
        audience: AudienceSpec::Selector(places.join(" OR ")),
        expires_at_ms: alert.infos.iter().filter_map(|i| i.expires_ms).min(),
        start_at_ms: None,
    })
}

/// What became of an alert.
#[derive(Debug, Serialize, ToSchema)]
pub struct AlertOutcome {
    pub identifier: String,
    /// The campaign that sends it, when it is sent.
    pub campaign: Option<String>,
    pub lane: Option<String>,
    /// Campaigns of earlier alerts stopped by this Update or Cancel.
    pub cancelled: Vec<String>,
    /// References to alerts this broker never sent.
    pub unknown_references: Vec<String>,
    /// Why it is not sent (not Actual, or received before), if it is not.
    pub not_sent: Option<String>,
    /// The same alert (its sender and identifier) was received before:
    /// `campaign` is what it became then, and nothing more is sent.
    pub repost: bool,
}

/// The idempotency scope alerts are submitted under (their keys).
const KEYS: &str = "cap";

/// An alert's submission key: a digest of its sender and identifier (CAP
/// allows them any length and any characters but a few).
fn alert_key(sender: &str, identifier: &str) -> String {
    let mut h = blake3::Hasher::new();
    h.update(sender.as_bytes());
    h.update(&[0]);
    h.update(identifier.as_bytes());
    h.finalize().to_hex().to_string()
}

/// The campaigns the alerts `(sender, identifier)` became, where this
/// broker sent them (and still keeps them). Reads the store: on a
/// blocking thread.
async fn sent_as(
    api: &Api,
    alerts: Vec<(String, String)>,
) -> Result<Vec<((String, String), Option<CampaignId>)>, ApiError> {
    let broker = Arc::clone(&api.broker);
    Ok(tokio::task::spawn_blocking(move || {
        let engine = broker.store().engine();
        alerts
            .into_iter()
            .map(|(s, i)| {
                let mut id = broker.dispatcher().submitted_as(KEYS, &alert_key(&s, &i))?;
                if id.is_none() {
                    // Alerts sent before they were submitted under a key.
                    id = engine
                        .get(Cf::Meta, &keys::cap_alert(&s, &i))?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                        .map(|b| CampaignId(u64::from_be_bytes(b)));
                }
                Ok(((s, i), id))
            })
            .collect::<crate::Result<Vec<_>>>()
    })
    .await??)
}

/// `POST /v1/alerts/cap`
#[utoipa::path(post, path = "/v1/alerts/cap", tag = "alerts", security(("token" = [])),
    request_body(content = String, content_type = "application/cap+xml", description = "A CAP 1.2 alert"),
    responses(
        (status = 201, description = "Sent as a campaign", body = AlertOutcome),
        (status = 200, description = "A Cancel applied, an alert that is not Actual checked and not sent, or a repost of an alert received before (not sent again)", body = AlertOutcome),
        (status = 400, description = "Not valid CAP 1.2, or not sendable: the reason", body = ErrorBody),
    ))]
pub async fn post_alert(
    State(api): State<Arc<Api>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|r| super::error::body_rejection(&r))?;
    let xml = std::str::from_utf8(&body)
        .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_cap", "not UTF-8"))?;
    let alert = parse(xml).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_cap", e))?;
    let mut outcome = AlertOutcome {
        identifier: alert.identifier.clone(),
        campaign: None,
        lane: None,
        cancelled: Vec::new(),
        unknown_references: Vec::new(),
        not_sent: None,
        repost: false,
    };
    if alert.status != "Actual" {
        outcome.not_sent = Some(format!(
            "status {}: only Actual alerts reach health workers",
            alert.status
        ));
        return Ok((StatusCode::OK, Json(outcome)).into_response());
    }
    if matches!(alert.msg_type.as_str(), "Ack" | "Error") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_cap",
            format!(
                "alert.msgType {}: only Alert, Update and Cancel are sent",
                alert.msg_type
            ),
        ));
    }
    // One alert is sent once: a repost of the same message, as feeds and
    // retrying publishers make, is answered with the campaign it became.
    let _one_at_a_time = api.cap_order.lock().await;
    if alert.msg_type != "Cancel"
        && let [(_, Some(id))] =
            sent_as(&api, vec![(alert.sender.clone(), alert.identifier.clone())])
                .await?
                .as_slice()
    {
        outcome.campaign = Some(id.to_string());
        outcome.repost = true;
        outcome.not_sent = Some(format!(
            "alert {} from {} was received before and sent as campaign {id}; a repost is not sent again",
            alert.identifier, alert.sender
        ));
        return Ok((StatusCode::OK, Json(outcome)).into_response());
    }
    // Check the new campaign before stopping anything.
    let spec = if alert.msg_type == "Cancel" {
        None
    } else {
        let channels = if api.config.default_channels.is_empty() {
            api.broker.dispatcher().channels().keys().cloned().collect()
        } else {
            api.config.default_channels.clone()
        };
        Some(
            campaign_of(&alert, channels)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_cap", e))?,
        )
    };
    // The earlier alerts an Update or Cancel names.
    let earlier: Vec<(String, Option<CampaignId>)> = sent_as(&api, alert.references.clone())
        .await?
        .into_iter()
        .map(|((s, i), id)| (format!("{s},{i}"), id))
        .collect();
    if alert.msg_type == "Cancel" && earlier.iter().all(|(_, id)| id.is_none()) {
        return Err(ApiError::not_found(format!(
            "alert.references: no alert this broker sent is named ({})",
            earlier
                .iter()
                .map(|(r, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        )));
    }
    for (reference, id) in earlier {
        match id {
            Some(id) => {
                api.broker.dispatcher().cancel(id).await?;
                outcome.cancelled.push(id.to_string());
            }
            None => outcome.unknown_references.push(reference),
        }
    }
    let Some(spec) = spec else {
        return Ok((StatusCode::OK, Json(outcome)).into_response());
    };
    outcome.lane = Some(spec.lane.as_str().to_string());
    // Accepted under the alert's key, in the same commit as the campaign:
    // a repost (even after a crash right after the commit) finds it, and so
    // does a later Update or Cancel.
    let key = alert_key(&alert.sender, &alert.identifier);
    let once = Once {
        scope: KEYS,
        field: "identifier",
        request: *blake3::hash(key.as_bytes()).as_bytes(),
        key,
    };
    let submitted = api.broker.dispatcher().submit_once(spec, once).await?;
    outcome.campaign = Some(submitted.id.to_string());
    outcome.repost = submitted.replayed;
    let status = if submitted.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(outcome)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn alert_xml(status: &str, msg_type: &str, extra: &str, infos: &str) -> String {
        format!(
            r#"<?xml version="1.0" encoding="UTF-8"?>
<alert xmlns="urn:oasis:names:tc:emergency:cap:1.2">
  <identifier>MOH-LR-2026-0042</identifier>
  <sender>alerts@moh.gov.lr</sender>
  <sent>2026-11-28T09:00:00+00:00</sent>
  <status>{status}</status>
  <msgType>{msg_type}</msgType>
  <scope>Public</scope>
  {extra}
  {infos}
</alert>"#
        )
    }

    const INFO_EN: &str = r#"<info>
    <language>en-US</language>
    <category>Health</category>
    <event>Cholera outbreak</event>
    <urgency>Immediate</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <expires>2026-11-29T09:00:00+00:00</expires>
    <headline>Cholera confirmed in Bong</headline>
    <description>Three confirmed cases in Gbarnga.</description>
    <instruction>Report suspected cases today; use ORS.</instruction>
    <area><areaDesc>Bong County</areaDesc><geocode><valueName>MOH-LOC</valueName><value>D-BONG</value></geocode></area>
  </info>"#;

    const INFO_FR: &str = r#"<info>
    <language>fr</language>
    <category>Health</category>
    <event>Choléra</event>
    <urgency>Expected</urgency>
    <severity>Severe</severity>
    <certainty>Observed</certainty>
    <headline>Choléra confirmé à Bong</headline>
    <area><areaDesc>Bong</areaDesc><geocode><valueName>MOH-LOC</valueName><value>D-BONG</value></geocode></area>
  </info>"#;

    #[test]
    fn an_alert_becomes_a_campaign_with_variants_lane_area_and_expiry() {
        let xml = alert_xml("Actual", "Alert", "", &format!("{INFO_EN}{INFO_FR}"));
        let alert = parse(&xml).unwrap();
        assert_eq!(alert.infos.len(), 2);
        let spec = campaign_of(&alert, vec!["sms".into()]).unwrap();
        assert_eq!(spec.lane, Lane::Emergency, "Immediate");
        assert_eq!(
            spec.body.default,
            "Cholera confirmed in Bong — Report suspected cases today; use ORS."
        );
        assert_eq!(spec.body.variants["fr"], "Choléra confirmé à Bong");
        assert_eq!(
            spec.audience,
            AudienceSpec::Selector("location:\"Location/D-BONG\"".into())
        );
        assert_eq!(spec.expires_at_ms, Some(1_795_942_800_000));
        assert_eq!(spec.name, "CAP Cholera outbreak: MOH-LR-2026-0042");
    }

    #[test]
    fn schema_errors_name_the_element() {
        let cases = [
            (
                alert_xml("Live", "Alert", "", INFO_EN),
                "alert.status: \"Live\" is not one of",
            ),
            (
                alert_xml(
                    "Actual",
                    "Alert",
                    "",
                    &INFO_EN.replace("<urgency>Immediate</urgency>", ""),
                ),
                "alert.info[0].urgency is required",
            ),
            (
                alert_xml("Actual", "Alert", "", &INFO_EN.replace("Severe", "Bad")),
                "alert.info[0].severity: \"Bad\"",
            ),
            (
                alert_xml(
                    "Actual",
                    "Alert",
                    "",
                    &INFO_EN.replace("<category>Health</category>", ""),
                ),
                "alert.info[0].category is required",
            ),
            (
                alert_xml("Actual", "Update", "", INFO_EN),
                "alert.references: an Update must name",
            ),
            (
                alert_xml("Actual", "Cancel", "<references>a,b</references>", ""),
                "is not sender,identifier,sent",
            ),
            (
                alert_xml("Actual", "Alert", "", INFO_EN)
                    .replace("2026-11-28T09:00:00+00:00", "yesterday"),
                "alert.sent: \"yesterday\"",
            ),
            (
                alert_xml("Actual", "Alert", "", INFO_EN).replace("cap:1.2", "cap:1.1"),
                "namespace",
            ),
            ("<alert".to_string(), "not well-formed XML"),
        ];
        for (xml, want) in cases {
            let e = parse(&xml).unwrap_err();
            assert!(e.contains(want), "{want:?} not in {e:?}");
        }
    }

    #[test]
    fn areas_without_a_geocode_are_refused_when_sent() {
        let polygon = INFO_EN.replace(
            "<geocode><valueName>MOH-LOC</valueName><value>D-BONG</value></geocode>",
            "<polygon>6.9,-9.5 7.1,-9.5 7.1,-9.3 6.9,-9.5</polygon>",
        );
        let alert = parse(&alert_xml("Actual", "Alert", "", &polygon)).unwrap();
        let e = campaign_of(&alert, vec![]).unwrap_err();
        assert!(e.contains("Bong County has no geocode"), "{e}");
    }

    #[test]
    fn references_are_read_as_sender_and_identifier() {
        let xml = alert_xml(
            "Actual",
            "Cancel",
            "<references>alerts@moh.gov.lr,MOH-LR-2026-0041,2026-11-27T09:00:00+00:00 x,y,2026-11-27T09:00:00+00:00</references>",
            "",
        );
        let alert = parse(&xml).unwrap();
        assert_eq!(
            alert.references,
            [
                (
                    "alerts@moh.gov.lr".to_string(),
                    "MOH-LR-2026-0041".to_string()
                ),
                ("x".to_string(), "y".to_string())
            ]
        );
    }
}
