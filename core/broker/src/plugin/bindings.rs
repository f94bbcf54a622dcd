//! Host bindings generated from the SDK's WIT (the one copy, `sdk/wit`).
//! The connector world generates the shared `types` and `host` interfaces;
//! the other two worlds reuse them, so every world speaks the same types.

pub mod connector {
    wasmtime::component::bindgen!({
        world: "connector",
        path: "../../sdk/wit",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
    });
}

pub mod classifier {
    wasmtime::component::bindgen!({
        world: "classifier",
        path: "../../sdk/wit",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "mhero:plugin/types": super::connector::mhero::plugin::types,
            "mhero:plugin/host": super::connector::mhero::plugin::host,
        },
    });
}

pub mod fhir {
    wasmtime::component::bindgen!({
        world: "fhir-mapper",
        path: "../../sdk/wit",
        additional_derives: [serde::Serialize, serde::Deserialize, PartialEq],
        with: {
            "mhero:plugin/types": super::connector::mhero::plugin::types,
            "mhero:plugin/host": super::connector::mhero::plugin::host,
        },
    });
}

pub use classifier::mhero::plugin::classifier_types;
pub use connector::mhero::plugin::connector_types;
pub use connector::mhero::plugin::host::{Host, LogLevel};
pub use connector::mhero::plugin::types::{
    Header, HttpRequest, HttpResponse, PluginError, PluginInfo, PluginKind, TransientError,
};
pub use fhir::mhero::plugin::fhir_types;
