//! Reply classifiers (world `classifier`).
//!
//! A classifier reads a health worker's reply, with what the question
//! expected, and says what it means: a label, a confidence, extracted
//! fields, the language it was written in.

#[doc(hidden)]
#[allow(clippy::too_many_arguments, reason = "generated code")]
pub mod bindings {
    wit_bindgen::generate!({
        world: "classifier",
        path: "wit",
        pub_export_macro: true,
        export_macro_name: "__export_classifier_world",
        default_bindings_module: "mhero_sdk::classifier::bindings",
        runtime_path: "mhero_sdk::__private::wit_bindgen::rt",
        additional_derives: [PartialEq],
        generate_unused_types: true,
    });
}

pub use bindings::mhero::plugin::classifier_types::{
    AnswerType, Classification, ClassifierInfo, ClassifyContext, Field,
};
pub use bindings::mhero::plugin::types::{
    Header, PluginError, PluginInfo, PluginKind, TransientError,
};

crate::shared_types!(crate::classifier::bindings);

pub trait Classifier {
    fn describe() -> ClassifierInfo;

    fn classify(text: String, context: ClassifyContext) -> Result<Classification, PluginError>;
}

/// Exports a [`Classifier`] implementation as the component's `classifier`
/// world.
#[macro_export]
macro_rules! export_classifier {
    ($plugin:ty) => {
        // Components export the world; native builds (tests, benches that
        // link several plugins) must not define the same export symbols.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            use $crate::classifier as k;
            struct MheroClassifierExport;
            impl k::bindings::Guest for MheroClassifierExport {
                fn describe() -> k::ClassifierInfo {
                    $crate::panic::install();
                    <$plugin as k::Classifier>::describe()
                }
                fn classify(text: String, context: k::ClassifyContext) -> Result<k::Classification, k::PluginError> {
                    $crate::panic::install();
                    <$plugin as k::Classifier>::classify(text, context)
                }
            }
            $crate::classifier::bindings::__export_classifier_world!(MheroClassifierExport with_types_in $crate::classifier::bindings);
        };
    };
}
