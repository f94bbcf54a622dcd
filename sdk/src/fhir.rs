//! FHIR source mappers (world `fhir-mapper`).
//!
//! A mapper reads one FHIR R4 JSON document (a resource or a Bundle) and
//! returns the contacts, locations and groups in it. Bad entries become
//! per-entry [`EntryError`]s; the rest are still mapped.

macro_rules! fhir_world {
    ($($derive:tt)*) => {
        #[doc(hidden)]
        #[allow(clippy::too_many_arguments, reason = "generated code")]
        pub mod bindings {
            wit_bindgen::generate!({
                world: "fhir-mapper",
                path: "wit",
                pub_export_macro: true,
                export_macro_name: "__export_fhir_mapper_world",
                default_bindings_module: "mhero_sdk::fhir::bindings",
                runtime_path: "mhero_sdk::__private::wit_bindgen::rt",
                additional_derives: [$($derive)*],
                generate_unused_types: true,
            });
        }
    };
}

#[cfg(not(feature = "fixtures"))]
fhir_world!(PartialEq);
// The fixture runner writes the types as JSON.
#[cfg(feature = "fixtures")]
fhir_world!(PartialEq, serde::Serialize, serde::Deserialize);

pub use bindings::mhero::plugin::fhir_types::{
    Contact, EntryError, Group, Location, Mapped, MapperInfo, Telecom,
};
pub use bindings::mhero::plugin::types::{
    Header, PluginError, PluginInfo, PluginKind, TransientError,
};

crate::shared_types!(crate::fhir::bindings);

/// Helpers for reading FHIR R4 JSON.
#[cfg(feature = "fhir-mapper")]
#[path = "fhir_json.rs"]
pub mod json;

pub trait FhirMapper {
    fn describe() -> MapperInfo;

    /// Maps a FHIR R4 JSON resource or Bundle.
    fn map_resources(json: String) -> Result<Mapped, PluginError>;
}

/// Exports a [`FhirMapper`] implementation as the component's
/// `fhir-mapper` world.
#[macro_export]
macro_rules! export_fhir_mapper {
    ($plugin:ty) => {
        // Components export the world; native builds (tests, benches that
        // link several plugins) must not define the same export symbols.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::fhir as f;
            struct MheroFhirMapperExport;
            impl f::bindings::Guest for MheroFhirMapperExport {
                fn describe() -> f::MapperInfo {
                    $crate::panic::install();
                    <$plugin as f::FhirMapper>::describe()
                }
                fn map_resources(json: String) -> Result<f::Mapped, f::PluginError> {
                    $crate::panic::install();
                    <$plugin as f::FhirMapper>::map_resources(json)
                }
            }
            $crate::fhir::bindings::__export_fhir_mapper_world!(MheroFhirMapperExport with_types_in $crate::fhir::bindings);
        };
    };
}
