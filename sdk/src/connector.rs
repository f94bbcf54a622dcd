//! Channel connectors (worlds `connector`, `media-connector`,
//! `polling-connector`).
//!
//! A connector turns an [`OutboundMessage`] into the HTTP request a gateway
//! expects, reads the gateway's answer into a [`SendOutcome`], and reads the
//! gateway's webhooks (receipts, inbound messages). The broker performs the
//! HTTP itself, only to the hosts the plugin's manifest allows.
//!
//! ```ignore
//! struct MyGateway;
//! impl mhero_sdk::connector::Connector for MyGateway { /* … */ }
//! mhero_sdk::export_connector!(MyGateway);
//! ```

/// The world a connector exports, chosen by the SDK's features: `media`
/// adds `build-send-media`, `status-poll` adds the status query. A
/// component exports exactly its world's functions, so the broker learns
/// what a connector can do from its exports.
macro_rules! connector_world {
    ($world:literal) => {
        #[cfg(not(feature = "fixtures"))]
        connector_world!(@bindings $world, PartialEq);
        // The fixture runner reads and writes the types as JSON.
        #[cfg(feature = "fixtures")]
        connector_world!(@bindings $world, PartialEq, serde::Serialize, serde::Deserialize);
    };
    (@bindings $world:literal, $($derive:tt)*) => {
        #[doc(hidden)]
        #[allow(clippy::too_many_arguments, reason = "generated code")]
        pub mod bindings {
            wit_bindgen::generate!({
                world: $world,
                path: "wit",
                pub_export_macro: true,
                export_macro_name: "__export_connector_world",
                default_bindings_module: "mhero_sdk::connector::bindings",
                runtime_path: "mhero_sdk::__private::wit_bindgen::rt",
                additional_derives: [$($derive)*],
                generate_unused_types: true,
            });
        }
    };
}

#[cfg(not(any(feature = "media", feature = "status-poll")))]
connector_world!("connector");
#[cfg(all(feature = "media", not(feature = "status-poll")))]
connector_world!("media-connector");
#[cfg(all(feature = "status-poll", not(feature = "media")))]
connector_world!("polling-connector");
#[cfg(all(feature = "media", feature = "status-poll"))]
connector_world!("media-polling-connector");

pub use bindings::mhero::plugin::connector_types::{
    Attachment, BatchOutcome, ConnectorInfo, Failure, InboundMessage, Lane, OutboundMessage,
    Receipt, ReceiptStatus, RetryInfo, SendOutcome, StatusQuery, WebhookEvent, WebhookResult,
};
pub use bindings::mhero::plugin::types::{
    Header, HttpRequest, HttpResponse, PluginError, PluginInfo, PluginKind, TransientError,
};

crate::shared_types!(crate::connector::bindings);

/// The plugin's setting `key`, when set to something other than blanks.
pub fn setting(key: &str) -> Option<String> {
    crate::host::config(key).filter(|v| !v.trim().is_empty())
}

/// The setting `key`, or `unauthorized` naming it: a channel whose
/// connector lacks a credential or an address pauses until an operator
/// sets it, and no message is lost.
pub fn required(key: &str) -> Result<String, PluginError> {
    setting(key)
        .ok_or_else(|| PluginError::Unauthorized(format!("setting `{key}` is not configured")))
}

/// The value of the query parameter `name` of a request's URL.
pub fn query_param(request: &HttpRequest, name: &str) -> Option<String> {
    let query = request.url.split_once('?')?.1;
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (k == name).then(|| percent_decode(v))
    })
}

fn percent_decode(v: &str) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    i += 2;
                }
                _ => out.push(b'%'),
            },
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Checks a callback's shared secret for gateways that sign nothing: in
/// the header `header` when given and present, else in the URL's `token`
/// query parameter (the callback URL an operator registered). Compared in
/// constant time; `unauthorized` when it does not match.
pub fn check_token(
    request: &HttpRequest,
    header: Option<&str>,
    expected: &str,
) -> Result<(), PluginError> {
    let given = header
        .and_then(|h| request.header(h).map(str::to_string))
        .or_else(|| query_param(request, "token"))
        .unwrap_or_default();
    if crate::same_secret(given.as_bytes(), expected.as_bytes()) && !expected.is_empty() {
        return Ok(());
    }
    crate::host::log(
        crate::host::Level::Warn,
        "Callback with a wrong or missing token.",
    );
    Err(PluginError::Unauthorized(
        "callback token does not match".into(),
    ))
}

/// Checks Meta's `X-Hub-Signature-256` (WhatsApp Cloud API, Messenger) of
/// a webhook with the app's secret; `unauthorized` when it does not verify.
pub fn check_hub_signature(request: &HttpRequest, app_secret: &str) -> Result<(), PluginError> {
    let signature = request.header("x-hub-signature-256").unwrap_or_default();
    if crate::signature::verify_sha256_header(app_secret.as_bytes(), &request.body, signature) {
        return Ok(());
    }
    crate::host::log(
        crate::host::Level::Warn,
        "Webhook signature does not verify.",
    );
    Err(PluginError::Unauthorized(
        "webhook signature does not verify".into(),
    ))
}

/// Answers Meta's subscription check (`GET ?hub.mode=subscribe&
/// hub.verify_token=…&hub.challenge=…`) with the challenge.
pub fn hub_verification(
    request: &HttpRequest,
    verify_token: &str,
) -> Result<WebhookResult, PluginError> {
    match crate::signature::hub_challenge(&request.url, verify_token) {
        Ok(challenge) => Ok(WebhookResult {
            events: Vec::new(),
            response: HttpResponse::with_body(200, "text/plain", challenge),
        }),
        Err(true) => Err(PluginError::Unauthorized(
            "verify token does not match".into(),
        )),
        Err(false) => Err(PluginError::invalid(
            "not a subscription check (hub.mode, hub.challenge)",
        )),
    }
}

/// A channel connector. Every method is called on a pooled instance; keep
/// no state between calls that matters (instances are recycled).
pub trait Connector {
    /// Name, version and how the host should drive this connector.
    fn describe() -> ConnectorInfo;

    /// The request that sends one message.
    fn build_send(message: OutboundMessage) -> Result<HttpRequest, PluginError>;

    /// One request for several messages; only called when
    /// `ConnectorInfo::max_batch` > 1.
    fn build_send_batch(messages: Vec<OutboundMessage>) -> Result<HttpRequest, PluginError> {
        let _ = messages;
        Err(PluginError::InvalidInput(
            "this connector has no batch form".into(),
        ))
    }

    /// Reads the gateway's answer to [`Connector::build_send`]'s request.
    fn parse_send_response(response: HttpResponse) -> Result<SendOutcome, PluginError>;

    /// Reads the answer to a batch request: one outcome per message.
    fn parse_batch_response(
        messages: Vec<OutboundMessage>,
        response: HttpResponse,
    ) -> Result<Vec<BatchOutcome>, PluginError> {
        let _ = (messages, response);
        Err(PluginError::InvalidInput(
            "this connector has no batch form".into(),
        ))
    }

    /// Verifies and reads a webhook call.
    fn handle_webhook(request: HttpRequest) -> Result<WebhookResult, PluginError>;

    /// The request that sends a message with files (`message.text` is the
    /// caption). Exported only with the SDK's `media` feature: a connector
    /// without it tells the broker its channel carries no media.
    fn build_send_media(
        message: OutboundMessage,
        attachments: Vec<Attachment>,
    ) -> Result<HttpRequest, PluginError> {
        let _ = (message, attachments);
        Err(PluginError::InvalidInput(
            "this connector cannot carry media".into(),
        ))
    }

    /// The request asking the gateway about the first `covers` of
    /// `external_ids` (ids `accepted` gave). Exported only with the SDK's
    /// `status-poll` feature, for gateways that push no receipts.
    fn build_status_query(external_ids: Vec<String>) -> Result<StatusQuery, PluginError> {
        let _ = external_ids;
        Err(PluginError::InvalidInput(
            "this connector answers no status queries".into(),
        ))
    }

    /// The receipts in the answer to [`Connector::build_status_query`]'s
    /// request, for ids among those it covered.
    fn parse_status_answer(
        external_ids: Vec<String>,
        response: HttpResponse,
    ) -> Result<Vec<Receipt>, PluginError> {
        let _ = (external_ids, response);
        Err(PluginError::InvalidInput(
            "this connector answers no status queries".into(),
        ))
    }
}

/// The `media` interface's export, when the SDK's `media` feature is on.
#[cfg(feature = "media")]
#[doc(hidden)]
#[macro_export]
macro_rules! __connector_media_export {
    ($plugin:ty, $export:ident) => {
        impl $crate::connector::bindings::exports::mhero::plugin::media::Guest for $export {
            fn build_send_media(
                message: $crate::connector::OutboundMessage,
                attachments: Vec<$crate::connector::Attachment>,
            ) -> Result<$crate::connector::HttpRequest, $crate::connector::PluginError> {
                $crate::panic::install();
                <$plugin as $crate::connector::Connector>::build_send_media(message, attachments)
            }
        }
    };
}

#[cfg(not(feature = "media"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __connector_media_export {
    ($plugin:ty, $export:ident) => {};
}

/// The `status-poll` interface's export, when the SDK's `status-poll`
/// feature is on.
#[cfg(feature = "status-poll")]
#[doc(hidden)]
#[macro_export]
macro_rules! __connector_status_export {
    ($plugin:ty, $export:ident) => {
        impl $crate::connector::bindings::exports::mhero::plugin::status_poll::Guest for $export {
            fn build_status_query(
                external_ids: Vec<String>,
            ) -> Result<$crate::connector::StatusQuery, $crate::connector::PluginError> {
                $crate::panic::install();
                <$plugin as $crate::connector::Connector>::build_status_query(external_ids)
            }
            fn parse_status_answer(
                external_ids: Vec<String>,
                response: $crate::connector::HttpResponse,
            ) -> Result<Vec<$crate::connector::Receipt>, $crate::connector::PluginError> {
                $crate::panic::install();
                <$plugin as $crate::connector::Connector>::parse_status_answer(
                    external_ids,
                    response,
                )
            }
        }
    };
}

#[cfg(not(feature = "status-poll"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __connector_status_export {
    ($plugin:ty, $export:ident) => {};
}

/// Exports a [`Connector`] implementation as the component's `connector`
/// world.
#[macro_export]
macro_rules! export_connector {
    ($plugin:ty) => {
        // Components export the world; native builds (tests, benches that
        // link several plugins) must not define the same export symbols.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::connector as c;
            struct MheroConnectorExport;
            impl c::bindings::Guest for MheroConnectorExport {
                fn describe() -> c::ConnectorInfo {
                    $crate::panic::install();
                    <$plugin as c::Connector>::describe()
                }
                fn build_send(message: c::OutboundMessage) -> Result<c::HttpRequest, c::PluginError> {
                    $crate::panic::install();
                    <$plugin as c::Connector>::build_send(message)
                }
                fn build_send_batch(messages: Vec<c::OutboundMessage>) -> Result<c::HttpRequest, c::PluginError> {
                    $crate::panic::install();
                    <$plugin as c::Connector>::build_send_batch(messages)
                }
                fn parse_send_response(response: c::HttpResponse) -> Result<c::SendOutcome, c::PluginError> {
                    $crate::panic::install();
                    <$plugin as c::Connector>::parse_send_response(response)
                }
                fn parse_batch_response(
                    messages: Vec<c::OutboundMessage>,
                    response: c::HttpResponse,
                ) -> Result<Vec<c::BatchOutcome>, c::PluginError> {
                    $crate::panic::install();
                    <$plugin as c::Connector>::parse_batch_response(messages, response)
                }
                fn handle_webhook(request: c::HttpRequest) -> Result<c::WebhookResult, c::PluginError> {
                    $crate::panic::install();
                    <$plugin as c::Connector>::handle_webhook(request)
                }
            }
            $crate::__connector_media_export!($plugin, MheroConnectorExport);
            $crate::__connector_status_export!($plugin, MheroConnectorExport);
            $crate::connector::bindings::__export_connector_world!(MheroConnectorExport with_types_in $crate::connector::bindings);
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MockHost;

    fn request(url: &str, headers: &[(&str, &str)]) -> HttpRequest {
        HttpRequest {
            method: "POST".into(),
            url: url.into(),
            headers: headers.iter().map(|(n, v)| Header::new(*n, *v)).collect(),
            body: Vec::new(),
        }
    }

    #[test]
    fn settings_and_query_parameters() {
        let _host = MockHost::new()
            .config("a", "x")
            .config("blank", "  ")
            .install();
        assert_eq!(setting("a").as_deref(), Some("x"));
        assert_eq!(setting("blank"), None);
        assert!(
            matches!(required("blank"), Err(PluginError::Unauthorized(m)) if m.contains("`blank`"))
        );
        let r = request("/webhooks/sms?token=a%2Bb+c&x=%E2%9C%93&bad=%zz&t=%4", &[]);
        assert_eq!(query_param(&r, "token").as_deref(), Some("a+b c"));
        assert_eq!(query_param(&r, "x").as_deref(), Some("✓"));
        assert_eq!(query_param(&r, "bad").as_deref(), Some("%zz"));
        assert_eq!(query_param(&r, "t").as_deref(), Some("%4"));
        assert_eq!(query_param(&r, "missing"), None);
        assert_eq!(query_param(&request("/webhooks/sms", &[]), "token"), None);
    }

    #[test]
    fn callback_tokens() {
        let _host = MockHost::new().install();
        let header = Some("x-webhook-token");
        assert!(check_token(&request("/w?token=s3", &[]), header, "s3").is_ok());
        assert!(check_token(&request("/w", &[("X-Webhook-Token", "s3")]), header, "s3").is_ok());
        // The header, when present, is what counts.
        assert!(
            check_token(
                &request("/w?token=s3", &[("x-webhook-token", "no")]),
                header,
                "s3"
            )
            .is_err()
        );
        assert!(check_token(&request("/w?token=s4", &[]), None, "s3").is_err());
        assert!(check_token(&request("/w", &[]), None, "s3").is_err());
        // An empty expected secret never matches.
        assert!(check_token(&request("/w?token=", &[]), None, "").is_err());
    }

    #[test]
    fn meta_signatures_and_the_subscription_check() {
        let _host = MockHost::new().install();
        let mut r = request("/w", &[]);
        r.body = b"Hello, World!".to_vec();
        r.headers.push(Header::new(
            "X-Hub-Signature-256",
            crate::signature::sha256_header(b"It's a Secret to Everybody", &r.body),
        ));
        assert!(check_hub_signature(&r, "It's a Secret to Everybody").is_ok());
        assert!(check_hub_signature(&r, "another").is_err());
        let ok = hub_verification(
            &request(
                "/w?hub.mode=subscribe&hub.challenge=42&hub.verify_token=vt",
                &[],
            ),
            "vt",
        )
        .unwrap();
        assert_eq!(ok.response.body, b"42");
        assert!(matches!(
            hub_verification(
                &request(
                    "/w?hub.mode=subscribe&hub.challenge=42&hub.verify_token=x",
                    &[]
                ),
                "vt"
            ),
            Err(PluginError::Unauthorized(_))
        ));
    }
}
