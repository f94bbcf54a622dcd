//! The OpenAPI 3 document at `/openapi.json`, generated from the handlers'
//! annotations and the request and response types: it cannot drift from
//! the code.

use axum::Json;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{auth, courses, error, fhir, lab, reports, surveys, v1, validations};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mHero broker API",
        description = "Send messages to health workers, follow their delivery, and read what comes back. Every route except the health checks and channel webhooks needs a token: `Authorization: Bearer <token>`."
    ),
    paths(
        super::healthz,
        super::readyz,
        super::metrics,
        super::webhook,
        v1::create_campaign,
        v1::list_campaigns,
        v1::get_campaign,
        v1::campaign_deliveries,
        v1::cancel_campaign,
        v1::count_audience,
        v1::channels,
        v1::pause_channel,
        v1::resume_channel,
        v1::plugins,
        v1::dead_letters,
        v1::inbound,
        v1::inbound_subscribers,
        surveys::create_survey,
        lab::post_report,
        surveys::list_surveys,
        surveys::get_survey,
        surveys::responses_csv,
        surveys::search_responses,
        reports::inventory,
        courses::create_course,
        courses::list_courses,
        courses::get_course,
        courses::course_progress,
        validations::create_validation,
        validations::list_validations,
        validations::get_validation,
        validations::validation_bundle,
        validations::preview_write_back,
        validations::write_back,
        reports::search_observations,
        v1::replay_dead_letters,
        v1::create_token,
        v1::list_tokens,
        v1::revoke_token,
        super::cap::post_alert,
        super::contacts::list_contacts,
        super::contacts::get_contact,
        super::contacts::opt_out,
        super::contacts::opt_in,
        super::contacts::groups,
        super::contacts::summary,
        fhir::create_communication_request,
        fhir::read_communication_request,
        fhir::search_communications,
        fhir::read_communication,
        fhir::import_bundle,
        fhir::capability_statement,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, auth::Role, auth::TokenInfo)),
    modifiers(&BearerToken),
)]
pub struct ApiDoc;

struct BearerToken;

impl Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "token",
            SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
        );
    }
}

/// The OpenAPI 3 document.
pub async fn document() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented_with_its_schemas() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
        for (path, method) in [
            ("/v1/campaigns", "post"),
            ("/v1/campaigns", "get"),
            ("/v1/campaigns/{id}", "get"),
            ("/v1/campaigns/{id}/cancel", "post"),
            ("/v1/audience/count", "post"),
            ("/v1/channels", "get"),
            ("/v1/plugins", "get"),
            ("/v1/dead-letters", "get"),
            ("/v1/inbound", "get"),
            ("/v1/alerts/cap", "post"),
            ("/v1/dead-letters/replay", "post"),
            ("/v1/tokens", "post"),
            ("/v1/tokens/{id}", "delete"),
            ("/webhooks/{channel}", "post"),
            ("/healthz", "get"),
            ("/metrics", "get"),
            ("/fhir/r4/CommunicationRequest", "post"),
            ("/fhir/r4/CommunicationRequest/{id}", "get"),
            ("/fhir/r4", "post"),
            ("/fhir/r4/metadata", "get"),
        ] {
            assert!(doc["paths"][path][method].is_object(), "{method} {path}");
        }
        let schemas = &doc["components"]["schemas"];
        for schema in ["CampaignRequest", "CampaignStatus", "ErrorBody", "Role"] {
            assert!(schemas[schema].is_object(), "{schema}");
        }
        // The request's lanes are the broker's.
        let lanes = &schemas["LaneName"]["enum"];
        assert_eq!(
            lanes,
            &serde_json::json!(["emergency", "high", "normal", "bulk"])
        );
        assert_eq!(
            doc["components"]["securitySchemes"]["token"]["scheme"],
            "bearer"
        );
    }
}
