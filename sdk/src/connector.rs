//! Channel connectors (world `connector`).
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

#[doc(hidden)]
#[allow(clippy::too_many_arguments, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "connector",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_connector_world",
        default_bindings_module: "mhero_sdk::connector::bindings",
        runtime_path: "mhero_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        generate_unused_types: true,
    });
}

pub use bindings::mhero::plugin::connector_types::{
    BatchOutcome, ConnectorInfo, Failure, InboundMessage, Lane, OutboundMessage, Receipt,
    ReceiptStatus, RetryInfo, SendOutcome, WebhookEvent, WebhookResult,
};
pub use bindings::mhero::plugin::types::{
    Header, HttpRequest, HttpResponse, PluginError, PluginInfo, PluginKind, TransientError,
};

crate::shared_types!(crate::connector::bindings);

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
            $crate::connector::bindings::__export_connector_world!(MheroConnectorExport with_types_in $crate::connector::bindings);
        };
    };
}
