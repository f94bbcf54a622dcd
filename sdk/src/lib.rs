//! The mHero plugin SDK: write channel connectors, FHIR source mappers and
//! reply classifiers in Rust, test them with plain `cargo test`, and build
//! them into sandboxed WebAssembly components the broker loads.
//!
//! See `README.md` beside this crate for the author's guide.
//!
//! # Layout
//!
//! - `wit/`: the contract, package `mhero:plugin@1.1.0`. The one copy; the
//!   broker's host bindings are generated from the same files.
//! - [`connector`], [`fhir`], [`classifier`]: one module per world, each
//!   behind the cargo feature of the same name: the generated bindings,
//!   the trait a plugin implements, and its export macro.
//! - [`host`]: what the broker provides (log, config, clock). Inside the
//!   component these call the host; in native tests they go to the mock.
//! - [`testing`]: the mock host for native tests: set config and time,
//!   read back what the plugin logged.
//! - [`panic`]: the panic hook that sends a panic's message to the host log
//!   before the instance traps, so operators see why.
//!
//! A call flows: the broker calls an export → the export macro's shim
//! installs the panic hook → your trait method runs, calling [`host`]
//! functions as it likes → its result goes back across the boundary.

// Generated code names this crate by its public name.
#[cfg(any(feature = "connector", feature = "fhir-mapper", feature = "classifier"))]
#[allow(
    unused_extern_crates,
    reason = "the generated export macros name the crate `mhero_sdk`"
)]
extern crate self as mhero_sdk;

#[cfg(feature = "classifier")]
pub mod classifier;
#[cfg(feature = "connector")]
pub mod connector;
#[cfg(feature = "fhir-mapper")]
pub mod fhir;
pub mod host;
pub mod panic;
#[cfg(feature = "connector")]
pub mod signature;
#[cfg(feature = "connector")]
pub mod sms;
pub mod testing;

#[cfg(all(
    target_arch = "wasm32",
    not(any(feature = "connector", feature = "fhir-mapper", feature = "classifier"))
))]
compile_error!(
    "mhero-sdk: enable the feature of the world your plugin implements: connector, fhir-mapper or classifier"
);

#[doc(hidden)]
pub mod __private {
    pub use wit_bindgen;
}

/// Compares two secrets (webhook tokens, signatures) in time that does
/// not depend on where they differ, so a caller cannot find a secret byte
/// by byte by timing the answers.
pub fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Finds a header by name, ignoring case.
pub fn header<'a, H: HeaderLike>(headers: &'a [H], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|h| h.name().eq_ignore_ascii_case(name))
        .map(HeaderLike::value)
}

/// A header of any world's bindings (each world has its own generated copy
/// of the shared types).
pub trait HeaderLike {
    fn name(&self) -> &str;
    fn value(&self) -> &str;
}

#[cfg(any(feature = "connector", feature = "fhir-mapper", feature = "classifier"))]
macro_rules! shared_types {
    ($bindings:path) => {
        use $bindings as b;

        impl $crate::HeaderLike for b::mhero::plugin::types::Header {
            fn name(&self) -> &str {
                &self.name
            }
            fn value(&self) -> &str {
                &self.value
            }
        }

        impl b::mhero::plugin::types::Header {
            pub fn new(name: impl Into<String>, value: impl Into<String>) -> Self {
                Self {
                    name: name.into(),
                    value: value.into(),
                }
            }
        }

        impl b::mhero::plugin::types::PluginError {
            /// The error for input this plugin cannot handle.
            pub fn invalid(message: impl Into<String>) -> Self {
                Self::InvalidInput(message.into())
            }

            /// A passing failure, optionally with when to retry.
            pub fn transient(message: impl Into<String>, retry_after_ms: Option<u64>) -> Self {
                Self::Transient(b::mhero::plugin::types::TransientError {
                    message: message.into(),
                    retry_after_ms,
                })
            }
        }

        impl b::mhero::plugin::types::HttpResponse {
            /// A response with a body and a content type.
            pub fn with_body(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
                Self {
                    status,
                    headers: vec![b::mhero::plugin::types::Header::new(
                        "content-type",
                        content_type,
                    )],
                    body: body.into(),
                }
            }

            /// The body as UTF-8 text (lossy).
            pub fn text(&self) -> std::borrow::Cow<'_, str> {
                String::from_utf8_lossy(&self.body)
            }

            pub fn header(&self, name: &str) -> Option<&str> {
                $crate::header(&self.headers, name)
            }

            /// `Retry-After` in its seconds form, as milliseconds (the
            /// HTTP-date form is not read: gateways send seconds).
            pub fn retry_after_ms(&self) -> Option<u64> {
                self.header("retry-after")?
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .map(|s| s.saturating_mul(1000))
            }
        }

        impl b::mhero::plugin::types::HttpRequest {
            /// The body as UTF-8 text (lossy).
            pub fn text(&self) -> std::borrow::Cow<'_, str> {
                String::from_utf8_lossy(&self.body)
            }

            pub fn header(&self, name: &str) -> Option<&str> {
                $crate::header(&self.headers, name)
            }
        }
    };
}
#[cfg(any(feature = "connector", feature = "fhir-mapper", feature = "classifier"))]
pub(crate) use shared_types;
