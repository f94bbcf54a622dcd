//! The HTTP API (axum): what integrators and operators call.
//!
//! # Layout
//!
//! - this file: [`ApiConfig`], the shared state [`Api`], the router (which
//!   role each route needs), health checks, `/metrics`, channel webhooks
//!   and [`serve`].
//! - [`v1`]: REST JSON under `/v1`: campaigns, audience counts, channels,
//!   plugins, dead letters, tokens.
//! - [`cap`]: CAP 1.2 alerts in, as campaigns (updates and cancels too).
//! - [`contacts`]: the directory: contacts, groups, opt-outs.
//! - [`fhir`]: the FHIR R4 facade under `/fhir/r4`: CommunicationRequest
//!   in and out, Bundle import into the directory, the CapabilityStatement.
//! - [`auth`]: tokens with roles, kept hashed.
//! - [`error`]: every error response, with its machine-readable code.
//! - [`openapi`]: the OpenAPI 3 document, generated from the handlers.
//! - [`quic`]: the QUIC API (batched submission, status and inbound
//!   subscriptions) for `mhero-client`.
//! - [`lab`]: lab results in as FHIR DiagnosticReports.
//! - [`surveys`]: flash surveys: start from a Questionnaire, live
//!   results, CSV, FHIR QuestionnaireResponses.
//! - [`courses`]: training courses: create, follow, per-worker progress.
//! - [`validations`]: data validation: the data-quality report, the
//!   corrections as a Bundle or written back to the sources.
//! - [`reports`]: the inventory roll-up and reports as FHIR Observations.
//!
//! Every route needs a token (`Authorization: Bearer …`) except the
//! health checks, the channel webhooks, which the channel's connector
//! verifies (signatures, secret tokens), and the dashboard page at `/`,
//! which holds no data and reads the API with the operator's token. A viewer reads; a sender also
//! submits, cancels and opts contacts out; an admin also manages tokens,
//! dead letters, channel pauses and opts contacts back in.

pub mod auth;
pub mod cap;
pub mod contacts;
pub mod courses;
pub mod error;
pub mod fhir;
pub mod lab;
pub mod openapi;
pub mod quic;
pub mod reports;
pub mod surveys;
pub mod v1;
pub mod validations;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

pub use auth::{Role, TokenInfo, Tokens};
pub use error::ApiError;

use crate::Broker;
use crate::channel::webhooks::MAX_WEBHOOK_BYTES;
use crate::dispatch::{CampaignSpec, Once, Submitted};
use crate::error::Result;
use crate::plugin::bindings::{Header, HttpRequest};

/// `[api]`: the HTTP listener and its limits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address and port of the HTTP API.
    pub listen: SocketAddr,
    /// Largest request body (KiB); larger ones get 413. Channel webhooks
    /// have their own limit (1 MiB).
    pub max_body_kb: usize,
    /// An admin token given by the operator (at least 24 characters; or
    /// the `MHERO_ADMIN_TOKEN` environment variable). Without one, the
    /// first start makes an admin token and prints it once.
    pub admin_token: Option<String>,
    /// Channels of a request that names none (a FHIR
    /// `CommunicationRequest` without `medium`, a CAP alert), in
    /// preference order; empty: every configured channel.
    pub default_channels: Vec<String>,
    /// Serve the QUIC API (for `mhero-client`).
    pub quic: bool,
    /// Address and port of the QUIC API (UDP).
    pub quic_listen: SocketAddr,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_kb: 4096,
            admin_token: None,
            default_channels: Vec::new(),
            quic: true,
            quic_listen: SocketAddr::from(([127, 0, 0, 1], 4433)),
        }
    }
}

impl ApiConfig {
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_body_kb == 0 || self.max_body_kb > 1024 * 1024 {
            return Err("api.max_body_kb must be between 1 and 1048576".into());
        }
        if let Some(t) = &self.admin_token
            && t.len() < 24
        {
            return Err("api.admin_token must be at least 24 characters".into());
        }
        Ok(())
    }
}

/// What every handler shares.
pub struct Api {
    broker: Arc<Broker>,
    tokens: Arc<Tokens>,
    config: ApiConfig,
    stopping: AtomicBool,
    /// CAP alerts are taken one at a time, so two posts of one alert at
    /// once cannot both be sent.
    cap_order: tokio::sync::Mutex<()>,
}

impl Api {
    pub fn new(broker: Arc<Broker>, tokens: Arc<Tokens>) -> Self {
        let config = broker.config().api.clone();
        Self {
            broker,
            tokens,
            config,
            stopping: AtomicBool::new(false),
            cap_order: tokio::sync::Mutex::new(()),
        }
    }

    /// The channels a workflow asked for, checked; or, when it named
    /// none, the API's default channels (else every channel configured).
    pub(crate) fn channels_for(&self, asked: &[String]) -> Result<Vec<String>, ApiError> {
        let configured: Vec<String> = self.broker.config().channels.keys().cloned().collect();
        if !asked.is_empty() {
            for c in asked {
                if !configured.contains(c) {
                    return Err(crate::Error::field_invalid(
                        "channels",
                        format!("no channel {c:?} (configured: {})", configured.join(", ")),
                    )
                    .into());
                }
            }
            return Ok(asked.to_vec());
        }
        Ok(if self.config.default_channels.is_empty() {
            configured
        } else {
            self.config.default_channels.clone()
        })
    }

    pub fn broker(&self) -> &Arc<Broker> {
        &self.broker
    }

    /// Submits `spec`, under the request's `Idempotency-Key` when it
    /// carries one: a retry of the same request (`request` makes the bytes
    /// that identify it, asked for only with a key) is answered what the
    /// first was, and nothing is sent twice.
    pub(crate) async fn submit(
        &self,
        headers: &HeaderMap,
        spec: CampaignSpec,
        request: impl FnOnce(&CampaignSpec) -> Vec<u8>,
    ) -> std::result::Result<Submitted, ApiError> {
        let dispatcher = self.broker.dispatcher();
        let Some(key) = headers.get("idempotency-key") else {
            return Ok(dispatcher.submit(spec).await?);
        };
        // The dispatcher checks the key; a byte that is not text becomes
        // a character it refuses.
        let once = Once {
            scope: "api",
            field: "Idempotency-Key",
            key: String::from_utf8_lossy(key.as_bytes()).into_owned(),
            request: *blake3::hash(&request(&spec)).as_bytes(),
        };
        Ok(dispatcher.submit_once(spec, once).await?)
    }

    pub fn tokens(&self) -> &Arc<Tokens> {
        &self.tokens
    }

    /// From now on `/readyz` answers 503, so load balancers stop sending
    /// new work while what is in flight finishes.
    pub fn stop_accepting(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// The admin token on start: the operator's (config or environment) is
/// adopted; with none and no token at all, one is made and returned, to
/// be shown once.
pub fn first_admin(
    tokens: &Tokens,
    configured: Option<&str>,
    now_ms: u64,
) -> Result<Option<String>> {
    if let Some(secret) = configured {
        tokens.adopt(secret, Role::Admin, "configured admin", now_ms)?;
        return Ok(None);
    }
    if tokens.is_empty() {
        let (secret, _) = tokens.create(Role::Admin, "first start", now_ms)?;
        return Ok(Some(secret));
    }
    Ok(None)
}

/// The whole HTTP surface.
pub fn router(api: Arc<Api>) -> Router {
    let viewer = Router::new()
        .route("/v1/campaigns", get(v1::list_campaigns))
        .route("/v1/campaigns/{id}", get(v1::get_campaign))
        .route(
            "/v1/campaigns/{id}/deliveries",
            get(v1::campaign_deliveries),
        )
        .route("/fhir/r4/Communication", get(fhir::search_communications))
        .route("/fhir/r4/Communication/{id}", get(fhir::read_communication))
        .route("/v1/audience/count", post(v1::count_audience))
        .route("/v1/channels", get(v1::channels))
        .route("/v1/plugins", get(v1::plugins))
        .route("/v1/dead-letters", get(v1::dead_letters))
        .route("/v1/inbound", get(v1::inbound))
        .route("/v1/inbound/subscribers", get(v1::inbound_subscribers))
        .route("/v1/inventory", get(reports::inventory))
        .route("/v1/courses", get(courses::list_courses))
        .route("/v1/validations", get(validations::list_validations))
        .route("/v1/validations/{id}", get(validations::get_validation))
        .route(
            "/v1/validations/{id}/bundle",
            get(validations::validation_bundle),
        )
        .route(
            "/v1/validations/{id}/write-back",
            get(validations::preview_write_back),
        )
        .route("/v1/courses/{id}", get(courses::get_course))
        .route("/v1/courses/{id}/progress", get(courses::course_progress))
        .route("/fhir/r4/Observation", get(reports::search_observations))
        .route("/v1/surveys", get(surveys::list_surveys))
        .route("/v1/surveys/{id}", get(surveys::get_survey))
        .route(
            "/v1/surveys/{id}/responses.csv",
            get(surveys::responses_csv),
        )
        .route(
            "/fhir/r4/QuestionnaireResponse",
            get(surveys::search_responses),
        )
        .route("/v1/contacts", get(contacts::list_contacts))
        .route("/v1/contacts/{query}", get(contacts::get_contact))
        .route("/v1/groups", get(contacts::groups))
        .route("/v1/directory", get(contacts::summary))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi::document))
        .route("/fhir/r4/metadata", get(fhir::capability_statement))
        .route(
            "/fhir/r4/CommunicationRequest/{id}",
            get(fhir::read_communication_request),
        )
        .route_layer(from_fn_with_state(Arc::clone(&api), require_viewer));
    let sender = Router::new()
        .route("/v1/campaigns", post(v1::create_campaign))
        .route("/v1/campaigns/{id}/cancel", post(v1::cancel_campaign))
        .route("/v1/alerts/cap", post(cap::post_alert))
        .route("/v1/surveys", post(surveys::create_survey))
        .route("/v1/courses", post(courses::create_course))
        .route("/v1/validations", post(validations::create_validation))
        .route("/fhir/r4/DiagnosticReport", post(lab::post_report))
        .route(
            "/fhir/r4/CommunicationRequest",
            post(fhir::create_communication_request),
        )
        .route("/fhir/r4", post(fhir::import_bundle))
        .route("/v1/contacts/{query}/opt-out", post(contacts::opt_out))
        .route_layer(from_fn_with_state(Arc::clone(&api), require_sender));
    let admin = Router::new()
        .route("/v1/tokens", get(v1::list_tokens).post(v1::create_token))
        .route("/v1/tokens/{id}", delete(v1::revoke_token))
        .route("/v1/dead-letters/replay", post(v1::replay_dead_letters))
        .route("/v1/channels/{name}/pause", post(v1::pause_channel))
        .route("/v1/channels/{name}/resume", post(v1::resume_channel))
        .route("/v1/contacts/{query}/opt-in", post(contacts::opt_in))
        .route(
            "/v1/validations/{id}/write-back",
            post(validations::write_back),
        )
        .route_layer(from_fn_with_state(Arc::clone(&api), require_admin));
    let body_limit = api.config.max_body_kb * 1024;
    let webhooks = Router::new()
        .route("/webhooks/{channel}", get(webhook).post(webhook))
        // One byte over the entry point's limit, so that it answers.
        .layer(DefaultBodyLimit::max(MAX_WEBHOOK_BYTES + 1));
    viewer
        .merge(sender)
        .merge(admin)
        .layer(DefaultBodyLimit::max(body_limit))
        .route("/", get(dashboard))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(webhooks)
        .fallback(not_found)
        .with_state(api)
}

/// Serves until `shutdown` resolves, then lets the requests in flight
/// finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    api: Arc<Api>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(api))
        .with_graceful_shutdown(shutdown)
        .await
}

/// The broker back from the server once it has stopped: the connections'
/// tasks let go of the router (and its hold on the broker) just after
/// [`serve`] returns. `None` if something still holds it after `wait`.
pub async fn release(broker: Arc<Broker>, wait: std::time::Duration) -> Option<Broker> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut held = broker;
    loop {
        match Arc::try_unwrap(held) {
            Ok(broker) => return Some(broker),
            Err(still) if tokio::time::Instant::now() < deadline => {
                held = still;
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(_) => return None,
        }
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Checks the request's token against `role`; the token's record goes
/// into the request's extensions for the handler.
async fn authorize(api: &Api, role: Role, mut req: Request, next: Next) -> Response {
    let refuse = |e: ApiError, req: &Request| {
        if req.uri().path().starts_with("/fhir/") {
            fhir::outcome(&e)
        } else {
            e.into_response()
        }
    };
    let Some(secret) = bearer(req.headers()) else {
        let e = ApiError::unauthorized("an API token is required: Authorization: Bearer <token>");
        return refuse(e, &req);
    };
    let Some(token) = api.tokens.check(secret) else {
        let e = ApiError::unauthorized("the token is not known (revoked, or mistyped)");
        return refuse(e, &req);
    };
    if token.role < role {
        let e = ApiError::forbidden(format!(
            "token {} is a {}; this needs a {} token",
            token.id,
            token.role.as_str(),
            role.as_str()
        ));
        return refuse(e, &req);
    }
    req.extensions_mut().insert(token);
    next.run(req).await
}

async fn require_viewer(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    authorize(&api, Role::Viewer, req, next).await
}

async fn require_sender(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    authorize(&api, Role::Sender, req, next).await
}

async fn require_admin(State(api): State<Arc<Api>>, req: Request, next: Next) -> Response {
    authorize(&api, Role::Admin, req, next).await
}

/// The operator's dashboard: one page, served by the binary, reading the
/// API with the token the operator gives it (the page itself holds no
/// data, so it needs none).
async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'",
            ),
        ],
        include_str!("dashboard.html"),
    )
        .into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {}", uri.path()))
}

/// Liveness: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", responses((status = 200, description = "The process answers")))]
pub async fn healthz() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({"status": "ok"}))
}

/// Readiness: the broker takes work (503 while it stops).
#[utoipa::path(get, path = "/readyz", tag = "health", responses(
    (status = 200, description = "Taking work"),
    (status = 503, description = "Stopping", body = error::ErrorBody),
))]
pub async fn readyz(State(api): State<Arc<Api>>) -> Response {
    if api.stopping.load(Ordering::Relaxed) {
        return ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the broker is stopping",
        )
        .into_response();
    }
    axum::Json(serde_json::json!({"status": "ready"})).into_response()
}

/// The broker's metrics: the Prometheus text format, or OpenMetrics when
/// the scraper asks for it (`Accept: application/openmetrics-text`).
#[utoipa::path(get, path = "/metrics", tag = "metrics", security(("token" = [])), responses(
    (status = 200, description = "Metrics", content_type = "text/plain; version=0.0.4"),
))]
pub async fn metrics(State(api): State<Arc<Api>>, headers: HeaderMap) -> Response {
    let openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("application/openmetrics-text"));
    let (content_type, body) = if openmetrics {
        (
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            api.broker.metrics().encode(),
        )
    } else {
        (
            "text/plain; version=0.0.4; charset=utf-8",
            api.broker.metrics().encode_text(),
        )
    };
    (
        [(header::CONTENT_TYPE, HeaderValue::from_static(content_type))],
        body,
    )
        .into_response()
}

/// A channel's webhook (delivery reports, inbound messages, verification
/// challenges), handed to its connector.
#[utoipa::path(post, path = "/webhooks/{channel}", tag = "webhooks",
    params(("channel" = String, Path, description = "The channel's name")),
    responses(
        (status = 200, description = "What the connector answers"),
        (status = 404, description = "No such channel", body = error::ErrorBody),
        (status = 413, description = "Body over 1 MiB", body = error::ErrorBody),
    ))]
pub async fn webhook(
    State(api): State<Arc<Api>>,
    Path(channel): Path<String>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: std::result::Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) => return error::body_rejection(&rejection).into_response(),
    };
    let request = HttpRequest {
        method: method.to_string(),
        url: uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), ToString::to_string),
        headers: headers
            .iter()
            .filter_map(|(name, value)| {
                Some(Header {
                    name: name.as_str().to_string(),
                    value: value.to_str().ok()?.to_string(),
                })
            })
            .collect(),
        body: body.to_vec(),
    };
    let answer = api.broker.webhooks().handle(&channel, request).await;
    let mut response = Response::new(axum::body::Body::from(answer.body));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    for h in answer.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_str(&h.value),
        ) {
            response.headers_mut().append(name, value);
        }
    }
    response
}
